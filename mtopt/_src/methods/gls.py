r"""Geometric Loss Strategy (GLS): minimise the geometric mean of the task losses."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, options

__all__ = ["gls"]


def gls(eps: float = 1e-8) -> base.Weighting:
    r"""Geometric Loss Strategy: the geometric mean of the losses as the objective.

    The objective is :math:`\bar L = (\prod_i L_i)^{1/T}`. Its gradient is a
    weighted sum of the task gradients,

    .. math::

        \nabla \bar L = \sum_i w_i \nabla L_i, \qquad
        w_i = \frac{\bar L}{T\, L_i}
            = \frac{1}{T} \exp\Big(\frac{1}{T}\sum_j \log L_j - \log L_i\Big),

    so GLS is returned as these weights on the raw losses (computed in log space,
    never as a product, so it neither overflows nor underflows). With them the
    reported total :math:`\sum_i w_i L_i` equals :math:`\bar L`.

    Properties: the weights do not change when all losses are scaled by one
    factor, and scaling one loss by :math:`c` scales its weight by
    :math:`c^{1/T - 1}` and the others by :math:`c^{1/T}`, so the direction
    :math:`\sum_i w_i \nabla L_i` only changes by the overall factor
    :math:`c^{1/T}`: no task can dominate by its scale. The weights sum to
    :math:`\bar L \cdot \mathrm{mean}_i(1/L_i)` (geometric over harmonic mean),
    which is 1 when all losses are equal and above 1 otherwise.

    Guard against non-positive and tiny losses: the geometric mean is only
    defined for positive losses, and at :math:`L_i \to 0` the weight of task
    :math:`i` diverges. Each loss is therefore clamped from below to
    ``eps * max_j L_j`` before the weights are computed (a floor relative to the
    largest loss, so the guard does not depend on the loss scale). A loss that
    is zero or negative is treated as ``eps`` times the largest one; its weight
    is then large but finite (at most :math:`\mathrm{eps}^{1/T - 1}/T`). If no
    loss is positive, all are treated as equal and every weight is :math:`1/T`.
    Between the floor and the largest loss the weights are exact.

    Conventions pinned: the weights multiply the raw losses and raw gradients.
    LibMTL backpropagates :math:`(\prod_i L_i)^{1/T}` directly (so its gradient
    is the one above), but the per-step weights it *reports* are
    ``L_i / (T prod L)``, which are not the weights of that gradient; ours are.

    References:
      Chennupati, Sistu, Yogamani and Rawashdeh, "MultiNet++: Multi-Stream
      Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning",
      CVPR Workshops, 2019.

    Args:
      eps: relative floor of the losses (see the guard above); must be in (0, 1).

    Returns:
      A stateless :class:`mtopt.Weighting` that needs only the losses.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import gls
      >>> method = gls()
      >>> state = method.init(2)
      >>> weights, _ = method.update(state, jnp.array([1.0, 4.0]))
      >>> [round(float(w), 4) for w in weights]  # sqrt(1 * 4) / (2 * L_i)
      [1.0, 0.25]
    """
    eps = options.real(eps, "eps", "gls")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"gls: eps must be in (0, 1), got {eps!r}.")

    def update(
        state: base.EmptyState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, base.EmptyState]:
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "gls", base.EmptyState)
        dtype = base.compute_dtype(losses)
        losses = jax.lax.stop_gradient(losses.astype(dtype))
        num_tasks = losses.shape[0]
        largest = jnp.max(losses)
        # When no loss is positive, every loss sits on the same floor: equal weights.
        floor = jnp.where(largest > 0, eps * largest, jnp.finfo(dtype).tiny)
        log_losses = jnp.log(jnp.maximum(losses, floor))
        log_weights = jnp.mean(log_losses) - log_losses
        weights = jnp.exp(log_weights) / jnp.asarray(num_tasks, dtype)
        return weights, state

    return base.Weighting(
        init=base.init_empty_state,
        update=update,
        needs=base.Needs.LOSSES,
        name="gls",
    )
