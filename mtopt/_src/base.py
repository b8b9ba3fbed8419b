"""The weighting protocol: what every multi-task method is.

A *weighting* maps what it knows about the tasks (the task losses, optionally
the Gramian ``G = J J^T`` or the Jacobian ``J`` of the task gradients) to one
weight per task, and carries a state from step to step. The combined gradient
is then ``sum_i w_i J_i``, which equals ``grad(sum_i stop_gradient(w_i) L_i)``.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
State = Any


class Needs(enum.Enum):
    """What a weighting reads, from cheapest to dearest.

    - ``LOSSES``: only the task losses. The training step costs one backward
      pass of ``sum_i w_i L_i``; no per-task gradient is ever formed.
    - ``GRAMIAN``: the T x T Gramian ``G_ij = <g_i, g_j>`` of the task gradients.
    - ``JACOBIAN``: the task gradients themselves (per-coordinate rules).

    Example:
      >>> import mtopt
      >>> mtopt.mgda().needs, mtopt.linear([1.0, 1.0]).needs
      (<Needs.GRAMIAN: 'gramian'>, <Needs.LOSSES: 'losses'>)
    """

    LOSSES = "losses"
    GRAMIAN = "gramian"
    JACOBIAN = "jacobian"


class InitFn(Protocol):
    def __call__(self, num_tasks: int, params: Optional[PyTree] = None) -> State: ...


class UpdateFn(Protocol):
    def __call__(
        self,
        state: State,
        losses: Array,
        *,
        gramian: Optional[Array] = None,
        jacobian: Optional[PyTree] = None,
        key: Optional[Array] = None,
        preference: Optional[Array] = None,
    ) -> tuple[Array, State]: ...


class CombineFn(Protocol):
    def __call__(
        self,
        jacobian: PyTree,
        weights: Array,
        state: State,
        *,
        key: Optional[Array] = None,
    ) -> PyTree: ...


class Weighting(NamedTuple):
    """A multi-task method: a pair of pure functions plus what it reads.

    Attributes:
      init: ``init(num_tasks, params=None) -> state``; the state is a pytree (a
        NamedTuple). ``params`` (a template of the parameters, or of the
        parameters the Jacobian is taken over) is needed only by methods that
        keep gradient-shaped buffers (MoCo, DB-MTL); others ignore it.
      update: ``update(state, losses, *, gramian=None, jacobian=None, key=None,
        preference=None) -> (weights, new_state)``. ``losses`` has shape (T,)
        and is never differentiated through; ``weights`` has shape (T,) and
        multiplies the *raw* task gradients (and raw losses), whatever
        normalisation the method uses internally.
      needs: what ``update`` reads; the training step computes just that.
      name: the registry name of the method.
      stochastic: True when ``update`` draws randomness from ``key`` (which is
        then required).
      combine: only for methods whose direction is not a weighted sum of the
        current task gradients (per-coordinate rules such as GradDrop, or
        methods that keep gradient buffers in their state, such as MoCo):
        ``combine(jacobian, weights, new_state, key=key) -> direction``, a
        pytree shaped like one task gradient. ``None`` means the combined
        gradient is ``sum_i weights_i J_i``.

    Example:
      A custom method: weights proportional to the losses.

      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> proportional = mtopt.Weighting(
      ...     init=lambda num_tasks, params=None: mtopt.EmptyState(),
      ...     update=lambda state, losses, **_: (losses / jnp.sum(losses), state),
      ...     needs=mtopt.Needs.LOSSES, name="proportional")
      >>> proportional.update(proportional.init(2), jnp.array([1.0, 3.0]))[0].tolist()
      [0.25, 0.75]
    """

    init: InitFn
    update: UpdateFn
    needs: Needs
    name: str
    stochastic: bool = False
    combine: Optional[CombineFn] = None


class EmptyState(NamedTuple):
    """The state of a stateless weighting.

    Example:
      >>> import mtopt
      >>> mtopt.mgda().init(3)
      EmptyState()
    """


def init_empty_state(num_tasks: int, params: Optional[PyTree] = None) -> EmptyState:
    """``init`` of a stateless weighting; validates ``num_tasks``."""
    del params
    check_num_tasks(num_tasks)
    return EmptyState()


def check_num_tasks(num_tasks: int) -> int:
    """Check that ``num_tasks`` is a positive Python int and return it."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
    return num_tasks


def check_losses(losses: Array, name: str = "losses") -> Array:
    """Check a (T,) floating vector of task losses; return it as an array."""
    losses = jnp.asarray(losses)
    if losses.ndim != 1:
        raise ValueError(
            f"{name} must be a vector of shape (T,) with one scalar loss per task, "
            f"got shape {losses.shape}."
        )
    if not jnp.issubdtype(losses.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {losses.dtype}.")
    return losses


def check_gramian(gramian: Optional[Array], num_tasks: int, method: str) -> Array:
    """Check that a method that needs the Gramian received a (T, T) one."""
    if gramian is None:
        raise ValueError(
            f"{method} needs the Gramian of the task gradients: pass gramian=, or use "
            "mtopt.value_and_grad, which computes it."
        )
    gramian = jnp.asarray(gramian)
    if gramian.shape != (num_tasks, num_tasks):
        raise ValueError(
            f"{method}: expected a Gramian of shape ({num_tasks}, {num_tasks}) for "
            f"{num_tasks} task losses, got shape {gramian.shape}."
        )
    return gramian


def check_state_tasks(expected: int, got: int, method: str) -> None:
    """Raise when the state was built for a different number of tasks."""
    if expected != got:
        raise ValueError(
            f"{method}: the state was initialised for {expected} tasks but the step "
            f"received {got} task losses. Call init(num_tasks={got}) or check the loss "
            "function."
        )


def check_concrete_vector(
    vector: Array, method: str, what: str, *, nonnegative: bool = False
) -> None:
    """When ``vector``'s values are known (not a tracer), check they are finite
    (and non-negative when asked); traced values pass unchecked."""
    try:
        values = np.asarray(vector, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{method}: {what} must be finite, got {values.tolist()}.")
    if nonnegative and np.any(values < 0):
        raise ValueError(f"{method}: {what} must be non-negative, got {values.tolist()}.")


def optional_task_vector(
    vector: Optional[Array],
    num_tasks: int,
    method: str,
    *,
    default: float,
    dtype: jnp.dtype,
    meaning: str,
    nonnegative: bool = False,
) -> Array:
    """An optional per-task ``preference=`` vector: ``default`` everywhere when absent.

    Checks the shape (T,) at trace time and, for concrete values, that they are
    finite (and non-negative when asked); ``meaning`` says what one entry is,
    e.g. ``"one weight per task"``.
    """
    if vector is None:
        return jnp.full((num_tasks,), default, dtype)
    vector = jnp.asarray(vector)
    if vector.shape != (num_tasks,):
        raise ValueError(
            f"{method}: preference must have shape ({num_tasks},), {meaning}, "
            f"got shape {vector.shape}."
        )
    check_concrete_vector(vector, method, "preference", nonnegative=nonnegative)
    return vector.astype(dtype)


def check_fixed_weight_count(expected: int, got: int, method: str) -> None:
    """Raise when a method built with fixed per-task weights meets another task count."""
    if expected != got:
        raise ValueError(
            f"{method} was built with {expected} weights (one fixed weight per task) but is used "
            f"with {got} tasks: pass {got} weights to {method}(...)."
        )


def check_key(key: Optional[Array], method: str) -> Array:
    """Check that a stochastic method received a PRNG key."""
    if key is None:
        raise ValueError(
            f"{method} draws randomness and needs an explicit PRNG key: pass "
            "key=jax.random.key(seed) (split it every step)."
        )
    return key


def compute_dtype(*arrays: Array) -> jnp.dtype:
    """float32, or float64 when an input is float64: weights are never bf16."""
    for a in arrays:
        if a is not None and jnp.asarray(a).dtype == jnp.float64:
            return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def optax_step(
    optimizer: Any, grads: PyTree, opt_state: Any, params: PyTree
) -> tuple[PyTree, Any]:
    """One optax step on a method's own parameters: ``(new_params, new_opt_state)``.

    Runs under standard dtype promotion, so methods that train their own
    parameters (uncertainty weighting, FAMO, GradNorm, IMTL-L) also work when
    the caller enables ``jax_numpy_dtype_promotion="strict"`` (optax's Adam
    mixes its int32 step count with floats).
    """
    import optax  # local import: base stays free of optax for the protocol types

    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state
