"""Gradient accumulation: the step pipeline's producer for a batch split into micro-batches.

The batch (every leaf of every positional argument, along its leading axis) is
split into ``k`` equal micro-batches and one micro-batch is in flight at a time
(``lax.scan``). What is accumulated depends on what the method reads:

- Gramian and Jacobian methods: the per-task gradients (and the penalty's
  gradient), summed over the micro-batches; the Gramian is then formed once, of
  the accumulated gradients. It is *not* the sum of the micro-batch Gramians
  (``G = (sum_m J_m)(sum_m J_m)^T``): accumulating the Gramian would weight with
  a different matrix. Memory: the T x P accumulated Jacobian plus one
  micro-batch's activations.
- Loss-only methods: a forward scan for the losses of the whole batch, the
  weights from them, then a second scan accumulating the gradient of
  ``sum_i w_i L_i`` micro-batch by micro-batch. Memory: one gradient
  accumulator plus one micro-batch; cost: ``k`` extra forward passes.

With task losses that are means over equal-sized micro-batches, the losses,
weights and gradients equal those of the full-batch step (up to the rounding
of the sums).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mtopt._src import aggregate as aggregate_lib
from mtopt._src import gramian as gramian_lib, jacobian as jacobian_lib
from mtopt._src import nan_policy as nan_lib, step as step_lib

Array = jax.Array
PyTree = Any


def split(args: tuple, num_micro_batches: int) -> tuple:
    """Every leaf of ``args`` reshaped from (B, ...) to (k, B / k, ...)."""

    def one(path, leaf):
        shape = jnp.shape(leaf)
        if not shape or shape[0] % num_micro_batches:
            where = jax.tree_util.keystr(path) or "<argument>"
            raise ValueError(
                f"micro_batches={num_micro_batches} splits every positional argument along "
                f"its leading (batch) axis, but the argument leaf {where} has shape {shape}, "
                f"not a multiple of {num_micro_batches}. Pass inputs that are not batched "
                "(e.g. linen batch_stats) as keyword arguments."
            )
        return jnp.reshape(leaf, (num_micro_batches, shape[0] // num_micro_batches) + shape[1:])

    return jax.tree_util.tree_map_with_path(one, args)


def _add(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: x + y.astype(x.dtype), a, b)


def _zeros(shapes: PyTree) -> PyTree:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def produce(config: step_lib.StepConfig, params: PyTree, args: tuple,
            kwargs: dict) -> step_lib.Produced:
    """The :class:`Produced` of the whole batch, from ``config.micro_batches`` micro-batches."""
    k = config.micro_batches
    batches = split(args, k)
    meta: dict[str, Any] = {}

    def forward(batch: tuple) -> jacobian_lib.Forward:
        fwd = jacobian_lib.forward(config.fn, params, *batch, has_aux=config.has_aux,
                                   kwargs=kwargs)
        meta.update(names=fwd.names, given_order=fwd.given_order,
                    has_penalty=fwd.penalty is not None)
        return fwd

    def value(fwd: jacobian_lib.Forward) -> tuple[Array, Array]:
        penalty = fwd.penalty if fwd.penalty is not None else jnp.zeros((), fwd.losses.dtype)
        return jax.lax.stop_gradient(fwd.losses), jax.lax.stop_gradient(penalty)

    mask = aggregate_lib.shared_mask(params, config.shared)
    first = jax.tree.map(lambda x: x[0], batches)
    value_shape = jax.eval_shape(lambda b: value(forward(b)), first)  # also fills meta
    if config.needs_jacobian:
        num_rows = value_shape[0].shape[0] + (1 if meta["has_penalty"] else 0)

        def rows_of(batch):
            fwd = forward(batch)
            losses, penalty = value(fwd)
            # One row per task, and one for the penalty's gradient when there is one.
            eye = jnp.eye(num_rows, losses.shape[0], dtype=losses.dtype)
            pen = jnp.zeros((num_rows,), losses.dtype).at[losses.shape[0]:].set(1.0)
            rows = jacobian_lib.pull_rows(fwd.pullback, eye, pen, strategy=config.strategy,
                                          chunk_size=config.chunk_size)
            return (rows, losses, penalty), fwd.aux

        sums_shape, _ = jax.eval_shape(rows_of, first)

        def body(sums, batch):
            out, aux = rows_of(batch)
            return _add(sums, out), aux

        (rows, losses, penalty), aux = jax.lax.scan(body, _zeros(sums_shape), batches)
        rows, losses, penalty = jax.tree.map(lambda x: x / k, (rows, losses, penalty))
        rows = config.mean(rows)
        losses, penalty = config.mean(losses), config.mean(penalty)
        num_tasks = losses.shape[0]
        jac = jax.tree.map(lambda r: r[:num_tasks], rows)
        penalty_grads = jax.tree.map(lambda r: r[num_tasks], rows) if meta["has_penalty"] \
            else None
        gram = None
        if config.wants_gramian:
            gram = gramian_lib.gramian(aggregate_lib.select(jac, mask, True))

        def pull(w: Array, ws: Array) -> PyTree:
            grads = aggregate_lib.weighted_sum(jac, mask, w, ws)
            return grads if penalty_grads is None else _add(grads, penalty_grads)

        return step_lib.Produced(
            losses=losses, penalty=penalty if meta["has_penalty"] else None,
            names=meta["names"], given_order=meta["given_order"], aux=aux, gramian=gram,
            jacobian=jac, task_grads=jac, grads_ok=nan_lib.rows_finite(jac, num_tasks),
            pull=pull, mask=mask, penalty_grads=penalty_grads,
        )

    # Loss-only: the losses of the whole batch first, the weighted gradient after.
    def losses_of(sums, batch):
        fwd = forward(batch)
        return _add(sums, value(fwd)), fwd.aux

    (losses, penalty), aux = jax.lax.scan(losses_of, _zeros(value_shape), batches)
    losses, penalty = config.mean(losses / k), config.mean(penalty / k)

    def pull(w: Array, ws: Array) -> PyTree:
        def body(total, batch):
            fwd = forward(batch)
            return _add(total, step_lib.pull_split(fwd.pullback, mask, w, ws)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        total, _ = jax.lax.scan(body, zeros, batches)
        return config.mean(jax.tree.map(lambda g: g / k, total))

    return step_lib.Produced(
        losses=losses, penalty=penalty if meta["has_penalty"] else None, names=meta["names"],
        given_order=meta["given_order"], aux=aux, gramian=None, jacobian=None, task_grads=None,
        grads_ok=None, pull=pull, mask=mask,
    )
