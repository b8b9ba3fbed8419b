r"""Random Loss Weighting (RLW): fresh random task weights at every step."""

from __future__ import annotations

from typing import Optional

import jax

from mtopt._src import base, options

__all__ = ["rlw"]

_DISTRIBUTIONS = ("normal", "uniform")


def rlw(distribution: str = "normal") -> base.Weighting:
    r"""Random Loss Weighting: softmax of a random vector, drawn anew at each step.

    At every step a vector :math:`z \in \mathbb{R}^T` is drawn from the explicit
    ``key`` and the weights are its softmax:

    .. math::

        z \sim \mathcal{N}(0, I_T) \;(\text{or } z \sim U(0, 1)^T), \qquad
        w_i = \frac{e^{z_i}}{\sum_j e^{z_j}} .

    The method reads only the losses, so the training step costs a single
    backward pass of :math:`\sum_i w_i L_i`.

    Conventions pinned:

    - The weights are on the simplex: they sum to **1**, as in LibMTL and in the
      Nash-MTL repository (``softmax(randn(T))``). Some forks multiply by ``T`` so
      that the weights sum to ``T``; multiply the weights by ``T`` to reproduce
      them (the direction is the same up to that factor).
    - The weights multiply the raw losses (and the raw task gradients).
    - ``distribution="normal"`` (the default) is the method of the current LibMTL
      and Nash-MTL code; ``"uniform"`` is the softmax of :math:`U(0, 1)` draws,
      one of the alternatives studied in the paper.
    - The weights do not depend on the losses; randomness comes only from
      ``key``, so the same key gives the same weights. Split the key every step.

    References:
      Lin, Ye, Zhang and Tsang, "Reasonable Effectiveness of Random
      Weighting: A Litmus Test for Multi-Task Learning", Transactions on Machine
      Learning Research (TMLR), 2022.

    Args:
      distribution: ``"normal"`` (standard normal draws, the default) or
        ``"uniform"`` (draws uniform on [0, 1)); the weights are their softmax.

    Returns:
      A :class:`mtopt.Weighting` that needs only the losses and draws
      randomness from ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mtopt import rlw
      >>> method = rlw()
      >>> state = method.init(3)
      >>> weights, state = method.update(state, jnp.array([1.0, 2.0, 3.0]),
      ...                                key=jax.random.key(0))
      >>> weights.shape
      (3,)
      >>> bool(jnp.isclose(weights.sum(), 1.0))
      True
    """
    distribution = options.choice(distribution, "distribution", "rlw", _DISTRIBUTIONS)

    def update(
        state: base.EmptyState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, base.EmptyState]:
        del gramian, jacobian, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "rlw", base.EmptyState)
        key = base.check_key(key, "rlw")
        dtype = base.compute_dtype(losses)
        shape = losses.shape
        if distribution == "normal":
            draws = jax.random.normal(key, shape, dtype=dtype)
        else:
            draws = jax.random.uniform(key, shape, dtype=dtype)
        return jax.nn.softmax(draws), state

    return base.Weighting(
        init=base.init_empty_state,
        update=update,
        needs=base.Needs.LOSSES,
        name="rlw",
        stochastic=True,
    )
