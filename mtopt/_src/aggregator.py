"""mtopt methods as ``optax.experimental.aggregating.Aggregator`` transformations."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
from optax.experimental import aggregating

from mtopt._src import aggregate as aggregate_lib
from mtopt._src import base, gramian as gramian_lib

Array = jax.Array
PyTree = Any


class AggregatorState(NamedTuple):
    """State of :func:`as_aggregator`: the method's state and the last weights.

    Attributes:
      method_state: the wrapped method's state.
      weights: (T,) weights used at the last update (ones before the first).

    Example:
      >>> import mtopt
      >>> agg = mtopt.as_aggregator(mtopt.mgda(), num_tasks=2)
      >>> state = agg.init({"w": __import__("jax").numpy.zeros(3)})
      >>> type(state).__name__, state.weights.shape
      ('AggregatorState', (2,))
    """

    method_state: Any
    weights: Array


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
    is a required keyword, as every optax extra argument. Chain it into an
    optimizer with ``optax.experimental.aggregating.process``; the method's
    state and the last weights are in the aggregator state.

    Note: like ``optax.contrib.differentially_private_aggregate``, it expects
    per-task gradients with the task axis first and must come before any
    transformation that works on ordinary (aggregated) gradients. ``process``
    forwards the extra arguments to the preprocessor too, so wrap it with
    ``optax.with_extra_args_support`` (``optax.identity()`` alone raises).

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
      >>> from optax.experimental import aggregating
      >>> import mtopt
      >>> fn = lambda p: jnp.stack([jnp.sum((p - 1.0) ** 2), jnp.sum((p + 1.0) ** 2)])
      >>> tx = aggregating.process(
      ...     optax.with_extra_args_support(optax.identity()),
      ...     mtopt.as_aggregator(mtopt.mgda(), num_tasks=2),
      ...     optax.sgd(0.1))
      >>> params = jnp.array([3.0, -2.0])
      >>> opt_state = tx.init(params)
      >>> losses, jac, _ = mtopt.task_jacobian(fn)(params)
      >>> updates, opt_state = tx.update(jac, opt_state, params, losses=losses)
      >>> params = optax.apply_updates(params, updates)
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
        return AggregatorState(method_state, jax.numpy.ones((num_tasks,), jax.numpy.float32))

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
        return agg.direction, AggregatorState(agg.state, weights)

    return aggregating.Aggregator(init=init, update=update)
