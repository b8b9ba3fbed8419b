"""mtopt methods as ``optax.experimental.aggregating.Aggregator`` transformations."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
from optax.experimental import aggregating

from mtopt._src import aggregate as aggregate_lib
from mtopt._src import base, gramian as gramian_lib, step as step_lib

Array = jax.Array
PyTree = Any


class AggregatorState(NamedTuple):
    """State of :func:`as_aggregator`: the method's state and what the last update saw.

    Attributes:
      method_state: the wrapped method's state.
      weights: (T,) weights used at the last update (ones before the first).
      info: the :class:`mtopt.StepInfo` of the last update (losses, weights,
        Gramian, norms, cosines, conflicts, solver diagnostics; zeros before the
        first); read it with :func:`mtopt.aggregator_info`, wherever the
        aggregator sits in a chain.

    Example:
      >>> import mtopt
      >>> agg = mtopt.as_aggregator(mtopt.mgda(), num_tasks=2)
      >>> state = agg.init({"w": __import__("jax").numpy.zeros(3)})
      >>> type(state).__name__, state.weights.shape
      ('AggregatorState', (2,))
    """

    method_state: Any
    weights: Array
    info: Any = None


def aggregator_info(opt_state: Any) -> step_lib.StepInfo:
    """The :class:`mtopt.StepInfo` of the last update of the :func:`as_aggregator` in an
    optimizer state, found wherever it sits (``optax.chain``, ``aggregating.process``,
    ``optax.MultiSteps``, an ``nnx.Optimizer``'s state).

    Args:
      opt_state: an optax state that holds exactly one :class:`mtopt.states.AggregatorState`.

    Returns:
      Its ``info``: ``losses``, ``weights``, ``total``, ``gramian``, ``norms``,
      ``cosines``, ``num_conflicts`` and ``solver`` of the last update;
      ``info.scalars()`` gives them as a flat dict for a metric writer.

    Raises:
      ValueError: when the state holds no aggregator state, or more than one.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import mtopt
      >>> tx = optax.chain(mtopt.as_aggregator(mtopt.mgda(), num_tasks=2), optax.sgd(0.1))
      >>> params = jnp.array([3.0, -2.0])
      >>> fn = lambda p: jnp.stack([jnp.sum((p - 1.0) ** 2), jnp.sum((p + 1.0) ** 2)])
      >>> losses, jac, _ = mtopt.task_jacobian(fn)(params)
      >>> updates, opt_state = tx.update(jac, tx.init(params), params, losses=losses)
      >>> info = mtopt.aggregator_info(opt_state)
      >>> info.losses.tolist(), [round(float(w), 3) for w in info.weights]
      ([13.0, 17.0], [0.75, 0.25])
    """
    is_state = lambda x: isinstance(x, AggregatorState)  # noqa: E731
    found = [leaf for leaf in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(leaf)]
    if len(found) != 1:
        raise ValueError(
            "aggregator_info: expected one mtopt.as_aggregator state in the optimizer state, "
            f"found {len(found)}."
        )
    return found[0].info


def as_aggregator(
    method: base.Weighting,
    num_tasks: int,
    *,
    shared: aggregate_lib.SharedSpec = None,
) -> aggregating.Aggregator:
    r"""Wrap a method as an optax aggregator: per-task gradients in, one update out.

    ``update(per_task_grads, state, params=None, *, losses, key=None,
    preference=None)`` takes a pytree whose leaves have a leading task axis T
    (e.g. from :func:`mtopt.task_jacobian`), computes the Gramian over the
    ``shared`` leaves, runs the method and returns
    :math:`\sum_i w_i g_i` (or the method's own combination). ``losses`` (T,)
    is a required keyword, as every optax extra argument.

    Put it first in an ``optax.chain``, which passes the extra arguments on:
    ``optax.chain(mtopt.as_aggregator(method, T), optax.clip_by_global_norm(1.0),
    optax.adam(1e-3))``, updated with ``tx.update(per_task_grads, opt_state,
    params, losses=losses)``. Like
    ``optax.contrib.differentially_private_aggregate`` it expects per-task
    gradients with the task axis first, so it must come before any
    transformation that works on ordinary (aggregated) gradients.
    ``optax.experimental.aggregating.process(optax.with_extra_args_support(
    optax.identity()), aggregator, optimizer)`` is the equivalent long form. The
    method's state and the last update's :class:`mtopt.StepInfo` (weights,
    Gramian, cosines; the Gramian is formed for every method, since the
    per-task gradients are there) are in the aggregator state:
    :func:`mtopt.aggregator_info` finds them in any optimizer state.

    Args:
      method: a :class:`mtopt.Weighting`.
      num_tasks: T, needed because optax's ``init`` only sees the parameters.
      shared: which leaves the Gramian covers (see :func:`mtopt.value_and_grad`).

    Returns:
      An ``optax.experimental.aggregating.Aggregator``.

    Raises:
      ValueError: for a method that needs calls an optax update cannot make:
        ``after_step`` (``famo(lagged=False)``: the losses after the step) or
        ``end_epoch`` (``dwa(steps_per_epoch="manual")``).

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> import mtopt
      >>> fn = lambda p: jnp.stack([jnp.sum((p - 1.0) ** 2), jnp.sum((p + 1.0) ** 2)])
      >>> tx = optax.chain(mtopt.as_aggregator(mtopt.mgda(), num_tasks=2),
      ...                  optax.clip_by_global_norm(1.0), optax.sgd(0.1))
      >>> params = jnp.array([3.0, -2.0])
      >>> opt_state = tx.init(params)
      >>> losses, jac, _ = mtopt.task_jacobian(fn)(params)
      >>> updates, opt_state = tx.update(jac, opt_state, params, losses=losses)
      >>> params = optax.apply_updates(params, updates)
      >>> [float(w) for w in mtopt.aggregator_info(opt_state).weights]   # MGDA's min-norm
      [0.75, 0.25]
    """
    base.check_num_tasks(num_tasks)
    # An optax update sees the gradients only: it cannot re-evaluate the losses after
    # the step, and it has no epochs.
    base.check_driver_can_run(method, "as_aggregator", after_step=False, epochs=False)

    def init(params: PyTree) -> AggregatorState:
        template = None
        if params is not None:
            mask = aggregate_lib.shared_mask(params, shared)
            template = aggregate_lib.select(params, mask, True)
        method_state = method.init(num_tasks, template)
        dtype = base.state_dtype()
        info = step_lib.build_info(
            jax.numpy.zeros((num_tasks,), dtype), jax.numpy.ones((num_tasks,), dtype), None,
            jax.numpy.zeros((num_tasks, num_tasks), dtype),
            solver=base.state_solver_info(method_state),
        )
        return AggregatorState(method_state, jax.numpy.ones((num_tasks,), jax.numpy.float32),
                               _as_stored(info))

    def update(
        per_task_grads: PyTree,
        state: AggregatorState,
        params: Optional[PyTree] = None,
        *,
        losses: Array,
        key: Optional[Array] = None,
        preference: Optional[Array] = None,
        **extra_args: Any,
    ) -> tuple[PyTree, AggregatorState]:
        del params, extra_args
        if method.stochastic:
            base.check_key(key, method.name)
        got = gramian_lib.num_tasks_of(per_task_grads)
        base.check_state_tasks(num_tasks, got, f"as_aggregator({method.name})")
        mask = aggregate_lib.shared_mask(
            jax.tree.map(lambda g: g[0], per_task_grads), shared
        )
        agg = aggregate_lib.aggregate(
            method, state.method_state, losses, per_task_grads, mask=mask, key=key,
            preference=preference,
        )
        weights = agg.weights.astype(state.weights.dtype)
        gram = agg.gramian
        if gram is None:  # loss-only methods: the per-task gradients are here anyway
            gram = gramian_lib.gramian(aggregate_lib.select(per_task_grads, mask, True))
        info = _as_stored(step_lib.build_info(losses, agg.weights, None, gram,
                                              solver=base.state_solver_info(agg.state)))
        if state.info is not None:  # the stored dtypes, so that a scan carry keeps its type
            info = jax.tree.map(lambda new, old: new.astype(old.dtype), info, state.info)
        return agg.direction, AggregatorState(agg.state, weights, info)

    return aggregating.Aggregator(init=init, update=update)


def _as_stored(info: step_lib.StepInfo) -> step_lib.StepInfo:
    """The info as the state stores it: the same shapes at every step (no aux, no names)."""
    return info.replace(aux=None, task_grads=None, names=None)
