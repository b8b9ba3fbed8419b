r"""GradDrop: per-coordinate gradient sign dropout (Just Pick a Sign)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base

__all__ = ["graddrop"]


def _check_jacobian(jacobian: base.PyTree, num_tasks: int, method: str) -> list[jax.Array]:
    """The Jacobian's leaves, checked to be floating arrays with leading axis T."""
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError(f"{method}: the Jacobian has no leaves (got {jacobian!r}).")
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        if leaf.ndim < 1 or leaf.shape[0] != num_tasks:
            raise ValueError(
                f"{method}: every Jacobian leaf must have a leading task axis of size "
                f"{num_tasks}, got a leaf of shape {leaf.shape}."
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"{method}: Jacobian leaves must be floating, got {leaf.dtype}.")
    return leaves


def _task_sum(x: jax.Array) -> jax.Array:
    """Sum over the leading task axis, as a contraction: XLA's CPU backend runs
    ``jnp.sum(x, axis=0)`` over a short leading axis of a large array tens of times
    slower than ``ones(T) @ x`` (measured by benchmarks/aggregation_benchmark.py)."""
    return jnp.tensordot(jnp.ones((x.shape[0],), x.dtype), x, axes=1)


def graddrop(leak: Union[float, Sequence[float]] = 0.0) -> base.Weighting:
    r"""GradDrop: keep, per coordinate, only the task gradients of one randomly chosen sign.

    For every coordinate :math:`k` of the (weighted) task gradients
    :math:`g_{ik} = w_i J_{ik}`, the *sign purity*

    .. math::

        P_k = \frac{1}{2}\Big(1 + \frac{\sum_i g_{ik}}{\sum_i |g_{ik}|}\Big) \in [0, 1]

    is the probability of keeping the positive contributions. With one uniform
    draw :math:`U_k \sim U[0, 1)` per coordinate (from ``key``), task :math:`i`'s
    contribution is kept when :math:`P_k > U_k` and :math:`g_{ik} > 0`, or when
    :math:`P_k < U_k` and :math:`g_{ik} < 0` (the mask :math:`M_{ik}`); the others
    are dropped. With leak :math:`\ell_i`, the direction is

    .. math::

        d_k = \sum_i g_{ik}\,\big(\ell_i + (1 - \ell_i) M_{ik}\big) .

    With ``leak = 0`` every coordinate of :math:`d` is a sum of contributions of
    one sign only (sign consistency); with ``leak = 1`` it is the plain sum
    :math:`\sum_i g_i`. A coordinate where every task gradient is zero gets
    :math:`P_k = 1/2` (no NaN) and contributes 0.

    The direction is not a weighted sum of the task gradients, so it comes from
    the ``combine`` function of the returned :class:`mtopt.Weighting`:
    ``combine(jacobian, weights, state, key=key)``. ``update`` returns
    **weights = ones**: the loss weights of the reported total
    :math:`\sum_i L_i` and of the task-specific parameters (heads keep their own
    unweighted gradient, as in LibMTL), and the per-task scale applied inside
    ``combine`` before the sign purity is computed (ones: the raw gradients).

    Where it is applied: LibMTL only supports GradDrop on the gradients of the
    shared representation; it first multiplies them by the sign of the
    representation and sums over the batch (the paper's batch reduction), then
    applies the rule per feature. Here the rule is applied per coordinate of
    whatever Jacobian the step passes (shared parameters, or a representation
    Jacobian with the batch already reduced). The uniform draws come from
    ``key``, split once per leaf of the Jacobian; the same key gives the same mask.

    References:
      Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov, "Just Pick a
      Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
      NeurIPS, 2020.

    Args:
      leak: the leak :math:`\ell \in [0, 1]`, a scalar or one value per task
        (LibMTL's default 0: pure sign dropout).

    Returns:
      A stochastic :class:`mtopt.Weighting` that needs the Jacobian and
      defines ``combine``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mtopt import graddrop
      >>> method = graddrop()
      >>> state = method.init(2)
      >>> jac = {"w": jnp.array([[1.0, -2.0, 3.0], [2.0, 1.0, 0.0]])}
      >>> key = jax.random.key(0)
      >>> weights, state = method.update(state, jnp.array([1.0, 1.0]), jacobian=jac, key=key)
      >>> direction = method.combine(jac, weights, state, key=key)
      >>> direction["w"][0], direction["w"][2]  # same-sign coordinates are kept whole
      (Array(3., dtype=float32), Array(3., dtype=float32))
    """
    if isinstance(leak, (bool, np.bool_)) or (
        isinstance(leak, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in leak)
    ):
        raise ValueError(f"graddrop: leak must be a float in [0, 1] or a (T,) vector, got {leak!r}.")
    try:
        leak_values = np.asarray(leak, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"graddrop: leak must be a float in [0, 1] or a (T,) vector, got {leak!r}."
        ) from None
    if leak_values.ndim > 1:
        raise ValueError(f"graddrop: leak must be a scalar or a (T,) vector, got {leak!r}.")
    if not np.all((leak_values >= 0) & (leak_values <= 1)):
        raise ValueError(f"graddrop: leak must be in [0, 1], got {leak!r}.")

    def leak_vector(num_tasks: int, dtype: jnp.dtype) -> jax.Array:
        if leak_values.ndim == 1 and leak_values.shape[0] != num_tasks:
            raise ValueError(
                f"graddrop: leak has {leak_values.shape[0]} values but there are "
                f"{num_tasks} tasks."
            )
        return jnp.broadcast_to(jnp.asarray(leak_values, dtype), (num_tasks,))

    def update(
        state: base.EmptyState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, base.EmptyState]:
        del gramian, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "graddrop", base.EmptyState)
        base.check_key(key, "graddrop")
        num_tasks = losses.shape[0]
        leak_vector(num_tasks, jnp.float32)
        if jacobian is not None:
            _check_jacobian(jacobian, num_tasks, "graddrop")
        return jnp.ones((num_tasks,), base.compute_dtype(losses)), state

    def combine(
        jacobian: base.PyTree,
        weights: base.Array,
        state: base.EmptyState,
        *,
        key: Optional[base.Array] = None,
    ) -> base.PyTree:
        del state
        key = base.check_key(key, "graddrop")
        weights = base.check_losses(weights, "weights")
        num_tasks = weights.shape[0]
        leaves = _check_jacobian(jacobian, num_tasks, "graddrop")
        treedef = jax.tree.structure(jacobian)
        leaf_keys = jax.random.split(key, len(leaves))
        directions = []
        for leaf, leaf_key in zip(leaves, leaf_keys):
            leaf = jnp.asarray(leaf)
            dtype = base.compute_dtype(leaf, weights)
            task_axis = (num_tasks,) + (1,) * (leaf.ndim - 1)
            grads = leaf.astype(dtype) * weights.astype(dtype).reshape(task_axis)
            total = _task_sum(grads)
            mass = _task_sum(jnp.abs(grads))
            has_mass = mass > 0
            purity = jnp.where(
                has_mass, 0.5 * (1.0 + total / jnp.where(has_mass, mass, 1.0)), 0.5
            )
            draws = jax.random.uniform(leaf_key, leaf.shape[1:], dtype=dtype)
            keep_positive = (purity > draws)[None]
            keep_negative = (purity < draws)[None]
            mask = (keep_positive & (grads > 0)) | (keep_negative & (grads < 0))
            task_leak = leak_vector(num_tasks, dtype).reshape(task_axis)
            scale = task_leak + (1.0 - task_leak) * mask.astype(dtype)
            directions.append(_task_sum(grads * scale).astype(leaf.dtype))
        return jax.tree.unflatten(treedef, directions)

    return base.Weighting(
        init=base.init_empty_state,
        update=update,
        needs=base.Needs.JACOBIAN,
        name="graddrop",
        stochastic=True,
        combine=combine,
    )
