"""The weighting protocol: what every multi-task method is.

A *weighting* maps what it knows about the tasks (the task losses, optionally
the Gramian ``G = J J^T`` or the Jacobian ``J`` of the task gradients) to one
weight per task, and carries a state from step to step. The combined gradient
is then ``sum_i w_i J_i``, which equals ``grad(sum_i stop_gradient(w_i) L_i)``.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

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
      preference: whether ``update`` reads ``preference=``: ``"none"`` (passing
        one is an error in every driver: it would be ignored), ``"optional"``
        (a default is used without one, e.g. UPGrad's ``1/T``) or
        ``"required"`` (the Pareto methods).
      shared_scale: only for methods that rescale the gradient of the *shared*
        parameters after combining (Nash-MTL's ``max_norm`` clip):
        ``shared_scale(new_state) -> ()``, the factor applied to the combined
        gradient of the leaves the Gramian covers; task-specific leaves keep
        ``sum_i weights_i J_i``. ``None`` means 1.
      task_names: the task names the method's per-task options were given by
        (e.g. ``mtopt.linear({"seg": 1.0, "depth": 0.1})``), in sorted order;
        every driver checks them against the loss names. ``None`` otherwise.
      positional: True when the method holds per-task options given by
        position (e.g. ``mtopt.linear([1.0, 0.1])``): a step whose loss dict
        comes in non-sorted order then raises instead of applying them to the
        sorted task order.
      after_step: only for methods with a second phase after the parameter
        step (``mtopt.famo(lagged=False)``): ``after_step(state, new_losses) ->
        state``, to be called with the (T,) task losses re-evaluated **on the
        same batch at the new parameters** (no gradient). The runner and
        :func:`mtopt.pareto.sweep` call it; drivers that cannot evaluate
        those losses (:func:`mtopt.as_aggregator`,
        :func:`mtopt.pareto.train_psl`) refuse the method when they are built;
        a hand-written loop calls it as the README's loop shows. ``None``: no
        second phase.
      end_epoch: only for methods whose epochs the driver closes
        (``mtopt.dwa(steps_per_epoch="manual")``): ``end_epoch(state) ->
        state``, to be called after the last step of every epoch. The runner
        calls it; drivers without epochs (``sweep``, ``train_psl``,
        ``as_aggregator``) refuse the method. ``None``: the method needs no
        epoch boundaries.
      stateful: True when the weights depend on earlier steps through the state
        (learned loss scales, running averages, gradient buffers, epoch
        statistics, a warm-up phase). Every driver threads one state per run;
        :func:`mtopt.pareto.train_psl`, which samples new preferences at every
        step and so has no run to thread a state along, refuses such a method
        instead of running it from its initial state each time. A state that
        only carries the task count, solver diagnostics or a warm start does
        not count.

    Example:
      A custom method: weights proportional to the losses.

      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> proportional = mtopt.Weighting(
      ...     init=lambda num_tasks, params=None: mtopt.EmptyState(num_tasks),
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
    preference: str = "none"
    shared_scale: Optional[Callable[[Any], Array]] = None
    task_names: Optional[tuple[str, ...]] = None
    positional: bool = False
    after_step: Optional[Callable[[Any, Array], Any]] = None
    end_epoch: Optional[Callable[[Any], Any]] = None
    stateful: bool = False


def check_weighting(method: Any, driver: str, example: str = "mtopt.mgda()") -> None:
    """Raise a TypeError naming the driver unless ``method`` is a :class:`Weighting`."""
    if not isinstance(method, Weighting):
        raise TypeError(
            f"{driver}: method must be an mtopt.Weighting (e.g. {example}), got "
            f"{type(method).__name__}."
        )


def check_driver_can_run(method: Weighting, driver: str, *, after_step: bool,
                         epochs: bool, history: bool = True) -> None:
    """Refuse, when a driver is built, a method whose declared needs it cannot honour.

    Args:
      method: the :class:`Weighting`.
      driver: the driver's name, for the message.
      after_step: whether the driver calls ``method.after_step`` after every
        parameter step with the losses re-evaluated on the same batch.
      epochs: whether the driver calls ``method.end_epoch`` at epoch ends.
      history: whether the driver threads one method state from step to step
        of a run (needed by ``method.stateful`` methods).

    Raises:
      ValueError: naming what the method needs and how to get a variant that
        needs nothing from the driver.
    """
    check_weighting(method, driver)
    if method.stateful and not history:
        raise ValueError(
            f"{driver}: the weights of {method.name} depend on its earlier steps (its state), "
            f"and {driver} has no run to carry that state along (every step starts from the "
            "initial state): it would run as another method. Use a stateless method (e.g. "
            "mtopt.tchebycheff(), mtopt.epo(), mtopt.mgda())."
        )
    if method.after_step is not None and not after_step:
        raise ValueError(
            f"{driver}: {method.name} has a second phase (after_step: the losses on the same "
            f"batch after the parameter step) that {driver} cannot provide; use its "
            "single-pass form (for FAMO: mtopt.famo(lagged=True), the default)."
        )
    if method.end_epoch is not None and not epochs:
        raise ValueError(
            f"{driver}: {method.name} closes its epochs only when the driver calls "
            f"end_epoch, and {driver} has no epochs; give the epoch length instead "
            "(for DWA: mtopt.dwa(steps_per_epoch=k)) or use mode='window'."
        )


@struct.dataclass
class EmptyState:
    """The state of a stateless weighting: it only knows its number of tasks.

    ``num_tasks`` is static (part of the pytree structure, not a leaf), so the
    state has no arrays, costs nothing under ``jit``/``vmap`` and still lets
    every step check that it received the T losses the state was made for.

    Example:
      >>> import mtopt
      >>> mtopt.equal().init(3)
      EmptyState(num_tasks=3)
    """

    num_tasks: int = struct.field(pytree_node=False)


class SolverInfo(NamedTuple):
    """Diagnostics of the iterative solver of one step (a certificate, not a guess).

    Attributes:
      iterations: () int32, iterations the solver ran (the largest over the
        sub-problems of the step, for methods that solve several).
      residual: () float32, the solver's accuracy certificate at the returned
        weights, relative and dimensionless: a duality gap or a KKT residual,
        as the method's docstring says (the largest over the sub-problems).
        Always float32, so a state's dtypes never change between steps.
      converged: () bool, True when the certificate met the tolerance within
        the iteration bound. False is never silent: it is in the state, in
        ``StepInfo.solver`` and in ``info.scalars()``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.mgda()
      >>> _, state = method.update(method.init(3), jnp.ones(3), gramian=jnp.eye(3))
      >>> bool(state.solver.converged)
      True
    """

    iterations: Array
    residual: Array
    converged: Array


def solver_info(iterations: Any, residual: Any, tol: Any) -> SolverInfo:
    """A :class:`SolverInfo` with ``converged = residual <= tol`` (NaN is not converged)."""
    residual = jnp.asarray(residual)
    return SolverInfo(
        iterations=jnp.asarray(iterations, jnp.int32),
        residual=residual.astype(jnp.float32),
        converged=residual <= jnp.asarray(tol, residual.dtype),
    )


def exact_solver_info() -> SolverInfo:
    """The :class:`SolverInfo` of a closed-form solve: 0 iterations, residual 0, converged."""
    return SolverInfo(
        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32), jnp.ones((), bool)
    )


def merge_solver_infos(infos: SolverInfo) -> SolverInfo:
    """One :class:`SolverInfo` from a batch of them (leading axis): the worst of each field."""
    return SolverInfo(
        iterations=jnp.max(infos.iterations),
        residual=jnp.max(infos.residual),
        converged=jnp.all(infos.converged),
    )


@struct.dataclass
class SolverState:
    """The state of a stateless weighting with an iterative solver.

    The weights do not depend on it; it carries the number of tasks (static,
    checked at every step) and the diagnostics of the last solve.

    Attributes:
      num_tasks: T (static).
      solver: the :class:`SolverInfo` of the last ``update`` (zeros and
        ``converged=True`` before the first).

    Example:
      >>> import mtopt
      >>> state = mtopt.upgrad().init(2)
      >>> state.num_tasks, int(state.solver.iterations)
      (2, 0)
    """

    num_tasks: int = struct.field(pytree_node=False)
    solver: SolverInfo


def init_empty_state(num_tasks: int, params: Optional[PyTree] = None) -> EmptyState:
    """``init`` of a stateless weighting; validates ``num_tasks``."""
    del params
    return EmptyState(check_num_tasks(num_tasks))


def init_solver_state(num_tasks: int, params: Optional[PyTree] = None) -> SolverState:
    """``init`` of a stateless weighting with an iterative solver."""
    del params
    return SolverState(check_num_tasks(num_tasks), exact_solver_info())


def check_state(state: Any, num_tasks: int, method: str, state_type: type) -> None:
    """Check that ``state`` is a ``state_type`` made by ``init(num_tasks)``.

    For :class:`EmptyState` and :class:`SolverState` (and any state with a
    static ``num_tasks`` attribute) the task count is compared; other states
    compare the task axis of their arrays with :func:`check_state_tasks`.
    """
    if state is None:
        raise ValueError(
            f"{method}: state is None; pass the state returned by method.init(num_tasks="
            f"{num_tasks}) (and then the new state each step returns)."
        )
    if not isinstance(state, state_type):
        raise TypeError(
            f"{method}: expected the {state_type.__name__} returned by {method}'s init, got "
            f"{type(state).__name__}."
        )
    expected = getattr(state, "num_tasks", None)
    if isinstance(expected, int):
        check_state_tasks(expected, num_tasks, method)


PREFERENCE_KINDS = ("none", "optional", "required")


def check_preference_use(method: "Weighting", preference: Any) -> None:
    """Raise when ``preference`` is given to a method that reads none, or missing for one
    that requires it: a preference must never be silently ignored."""
    if preference is not None and method.preference == "none":
        raise ValueError(
            f"{method.name} takes no preference vector, but preference= was given: it would "
            "be ignored (every run would be the same). Use a preference method (e.g. "
            "mtopt.epo(), mtopt.tchebycheff()) or drop preference=."
        )
    if preference is None and method.preference == "required":
        raise ValueError(
            f"{method.name} needs a preference vector: pass preference=r (shape (T,), "
            "non-negative, summing to 1)."
        )


def check_task_names(
    given: tuple[str, ...], names: tuple[str, ...], method: str, what: str
) -> None:
    """Raise unless ``given`` names exactly the tasks ``names`` (in any order)."""
    missing = sorted(set(names) - set(given))
    extra = sorted(set(given) - set(names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unknown {extra}")
        raise ValueError(
            f"{method}: the {what} given by task name do not match the loss names "
            f"{list(names)}: {', '.join(parts)}."
        )


def state_solver_info(state: Any) -> Optional[SolverInfo]:
    """The :class:`SolverInfo` a state carries in its ``solver`` field, or ``None``."""
    solver = getattr(state, "solver", None)
    return solver if isinstance(solver, SolverInfo) else None


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


def state_dtype() -> jnp.dtype:
    """The float dtype of a new method state: float64 when x64 is on, else float32.

    ``init`` sees no inputs, so it follows JAX's default float dtype; ``update``
    keeps every state array in the dtype ``init`` gave it (a ``lax.scan`` carry
    never changes type), while the weights follow the inputs
    (:func:`compute_dtype`).
    """
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


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
