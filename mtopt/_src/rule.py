"""Gramian weight rules as pure functions, and the one adapter that makes a method of one.

A *rule* is a plain function of the (T, T) Gramian (and, where the method reads
them, the losses, a preference vector or a key) that returns the weights and a
:class:`mtopt.SolverInfo`. It runs on its own, under ``jit`` and ``vmap``, and
checks what it is given. :func:`as_method` turns one into a
:class:`mtopt.Weighting`: the protocol's checks (losses, state, Gramian, key)
are made there once, for every stateless Gramian method. The shared numerics
of the rules (the scale normalisation, the visiting orders) live here too.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base

Array = jax.Array
# rule(gramian, losses, preference, key) -> (weights, solver info), with the
# method's options already bound.
BoundRule = Callable[[Array, Array, Optional[Array], Optional[Array]], tuple[Array, base.SolverInfo]]


def check_gramian(gramian: Any, method: str, dtype_of: tuple[Any, ...] = ()) -> Array:
    """A rule's Gramian: a square (T, T) floating matrix, in the compute dtype.

    The dtype is float32, or float64 when the Gramian (or one of ``dtype_of``)
    is float64 (:func:`mtopt._src.base.compute_dtype`).
    """
    gramian = jnp.asarray(gramian)
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(
            f"{method}: the Gramian must be a square (T, T) matrix with T >= 1, got shape "
            f"{gramian.shape}."
        )
    if not jnp.issubdtype(gramian.dtype, jnp.floating):
        raise TypeError(f"{method}: the Gramian must have a floating dtype, got {gramian.dtype}.")
    return gramian.astype(base.compute_dtype(gramian, *dtype_of))


def check_losses(losses: Any, num_tasks: int, method: str) -> Array:
    """A rule's (T,) losses, matching the Gramian's T."""
    losses = base.check_losses(losses)
    if losses.shape != (num_tasks,):
        raise ValueError(
            f"{method}: expected {num_tasks} losses for a ({num_tasks}, {num_tasks}) Gramian, "
            f"got shape {losses.shape}."
        )
    return losses


def unit_diagonal_scale(gramian: Array) -> tuple[Array, Array]:
    """``(G_s / s, s)``: the symmetrised Gramian ``G_s`` over ``s = max_i G_ii``.

    When ``s`` is not above the smallest normal number (a zero Gramian) the
    division is by 1 instead, so nothing is divided by zero or by a subnormal;
    ``s`` is returned as it is, for the caller to test ``s > tiny``. The rules
    whose weights do not change with a common scale of the gradients divide by
    ``s`` first, so that gradients of 1e-10 or 1e10 neither underflow nor
    overflow in what follows. A NaN entry stays NaN.
    """
    g = 0.5 * (gramian + gramian.T)
    scale = jnp.max(jnp.diagonal(g))
    return g / jnp.where(scale > jnp.finfo(g.dtype).tiny, scale, 1.0), scale


def visiting_orders(key: Array, num_tasks: int) -> Array:
    """(T, T) int array: row i is the random order in which task i visits all T tasks.

    Row i is ``argsort(jax.random.uniform(key, (T, T)), axis=-1)[i]``, a uniform
    random permutation per row, so the same key gives the same orders (PCGrad,
    GradVac).

    Example:
      >>> import jax
      >>> from mtopt.rules import visiting_orders
      >>> orders = visiting_orders(jax.random.key(0), 3)
      >>> orders.shape, sorted(orders[0].tolist())
      ((3, 3), [0, 1, 2])
    """
    return jnp.argsort(jax.random.uniform(key, (num_tasks, num_tasks)), axis=-1)


def as_method(
    rule: BoundRule,
    *,
    name: str,
    solver: bool,
    preference: str = "none",
    stochastic: bool = False,
) -> base.Weighting:
    """A stateless Gramian method (:class:`mtopt.Weighting`) from a weight rule.

    The method's ``update(state, losses, *, gramian, key, preference)`` checks
    the losses (a (T,) float vector), that the state is the one its ``init(T)``
    made for the same T, that the Gramian is (T, T) and, for a stochastic
    rule, that a key was given; then it returns the rule's weights,
    ``rule(gramian, losses, preference, key)[0]``, with the Gramian in the
    dtype of the inputs (float64 when the Gramian or the losses are). This is
    how every stateless Gramian method of mtopt is built from its rule in
    :mod:`mtopt.rules`.

    Args:
      rule: ``rule(gramian, losses, preference, key) -> (weights, solver_info)``
        with the method's options bound; ``solver_info`` is a
        :class:`mtopt.SolverInfo`, or ``None`` when ``solver`` is False.
      name: the method's name (in messages and ``Weighting.name``).
      solver: whether the rule is iterative: the state is then a
        :class:`mtopt.SolverState` holding the last solve's diagnostics (they
        reach ``info.solver`` in a training step), else an
        :class:`mtopt.EmptyState`.
      preference: ``"none"``, ``"optional"`` or ``"required"``
        (:attr:`mtopt.Weighting.preference`): whether ``update`` passes a
        preference vector on to the rule (``None`` when absent).
      stochastic: whether the rule draws from ``key`` (then required).

    Returns:
      A :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``, usable by every
      driver (:func:`mtopt.value_and_grad`, :func:`mtopt.pareto.sweep`, ...).

    Example:
      Weights proportional to the inverse gradient norms, as a method:

      >>> import jax, jax.numpy as jnp
      >>> import mtopt
      >>> def inverse_norm(gramian, losses, preference, key):
      ...     w = 1.0 / jnp.sqrt(jnp.diagonal(gramian))
      ...     return w / jnp.sum(w), None
      >>> method = mtopt.rules.as_method(inverse_norm, name="inverse_norm", solver=False)
      >>> fn = lambda p: jnp.stack([jnp.sum(p ** 2), 4.0 * jnp.sum((p - 1.0) ** 2)])
      >>> step = jax.jit(mtopt.value_and_grad(fn, method))
      >>> grads, info, state = step(jnp.array([1.0, 0.0]), method.init(2))
      >>> info.norms.tolist(), info.weights.tolist(), grads.tolist()  # 1/2 : 1/8
      ([2.0, 8.0], [0.800000011920929, 0.20000000298023224], [1.600000023841858, -1.600000023841858])
    """
    state_type = base.SolverState if solver else base.EmptyState

    def update(
        state: Any,
        losses: Array,
        *,
        gramian: Optional[Array] = None,
        jacobian: Any = None,
        key: Optional[Array] = None,
        preference: Optional[Array] = None,
    ) -> tuple[Array, Any]:
        del jacobian
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, name, state_type)
        gramian = base.check_gramian(gramian, num_tasks, name)
        if stochastic:
            key = base.check_key(key, name)
        gramian = gramian.astype(base.compute_dtype(gramian, losses))
        weights, info = rule(gramian, losses, preference, key)
        return weights, (base.SolverState(num_tasks, info) if solver else state)

    return base.Weighting(
        init=base.init_solver_state if solver else base.init_empty_state,
        update=update,
        needs=base.Needs.GRAMIAN,
        name=name,
        stochastic=stochastic,
        preference=preference,
    )
