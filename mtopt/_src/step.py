"""The training-gradient entry point: losses -> weights -> combined gradient."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from mtopt._src import aggregate as aggregate_lib
from mtopt._src import base, data_parallel, gramian as gramian_lib, jacobian as jacobian_lib
from mtopt._src import low_memory as low_memory_lib, nan_policy as nan_lib

Array = jax.Array
PyTree = Any


@struct.dataclass
class StepInfo:
    """Everything a step computed, for logging and for checking the maths.

    Attributes:
      losses: (T,) task losses at the current parameters.
      weights: (T,) weights the method put on the raw task losses / gradients.
      total: ``sum_i weights_i * losses_i + penalty``: the scalar whose gradient
        the step returned (exactly, for methods that are weighted sums).
      penalty: the penalty term (0 when the loss function returned none).
      gramian: (T, T) Gramian of the task gradients over the shared
        parameters, or ``None`` when the method did not need it and no
        diagnostics were asked for.
      cosines: (T, T) pairwise cosines of the task gradients, or ``None``.
      norms: (T,) task-gradient norms, or ``None``.
      num_conflicts: number of task pairs with ``G_ij < 0``, or ``None``.
      task_grads: the Jacobian pytree (leading task axis) when asked for with
        ``return_task_grads=True``, else ``None``. In representation mode these
        are gradients with respect to the representation.
      aux: the loss function's auxiliary output (``None`` without ``has_aux``).
      names: task names when the losses came as a dict (static), else ``None``.
      finite: True when every task loss, task gradient (when computed), the
        weights, the penalty and the combined gradient are finite.
      skipped: True when ``nan_policy="skip"`` dropped this step (zero
        gradients, method state unchanged); always False under the other
        policies.
      nonfinite_tasks: (T,) True for each task whose loss (or, when per-task
        gradients or the Gramian were computed, gradient) is not finite.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum((p - 1.0) ** 2)])
      >>> method = mtopt.linear([1.0, 0.5])
      >>> _, info, _ = mtopt.value_and_grad(fn, method)(jnp.zeros(2), method.init(2))
      >>> info.losses.tolist(), float(info.total)
      ([0.0, 2.0], 1.0)
    """

    losses: Array
    weights: Array
    total: Array
    penalty: Array
    gramian: Optional[Array] = None
    cosines: Optional[Array] = None
    norms: Optional[Array] = None
    num_conflicts: Optional[Array] = None
    task_grads: Any = None
    aux: Any = None
    names: Optional[tuple[str, ...]] = struct.field(pytree_node=False, default=None)
    finite: Optional[Array] = None
    skipped: Optional[Array] = None
    nonfinite_tasks: Optional[Array] = None

    def task_names(self) -> tuple[str, ...]:
        """The task names, or ``task0, task1, ...`` when none were given."""
        if self.names is not None:
            return self.names
        return tuple(f"task{i}" for i in range(self.losses.shape[-1]))

    def scalars(self, prefix: str = "") -> dict[str, Array]:
        """A flat ``{name: scalar}`` dict for any metric writer.

        Keys: ``total``, ``penalty``, ``loss/<task>``, ``weight/<task>``, and when
        the Gramian is known ``grad_norm/<task>``, ``cosine/<a>/<b>`` (a before
        b), ``num_conflicts``, and ``skipped`` (0 or 1) when the step had a NaN
        policy. Works on unbatched infos (call it outside ``vmap``).

        Example:
          >>> import jax.numpy as jnp
          >>> import mtopt
          >>> info = mtopt.StepInfo(losses=jnp.array([1.0, 2.0]),
          ...     weights=jnp.array([1.0, 0.5]), total=jnp.array(2.0), penalty=jnp.array(0.0))
          >>> sorted(info.scalars())
          ['loss/task0', 'loss/task1', 'penalty', 'total', 'weight/task0', 'weight/task1']
        """
        names = self.task_names()
        out: dict[str, Array] = {f"{prefix}total": self.total, f"{prefix}penalty": self.penalty}
        for i, name in enumerate(names):
            out[f"{prefix}loss/{name}"] = self.losses[i]
            out[f"{prefix}weight/{name}"] = self.weights[i]
            if self.norms is not None:
                out[f"{prefix}grad_norm/{name}"] = self.norms[i]
        if self.cosines is not None:
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    out[f"{prefix}cosine/{names[i]}/{names[j]}"] = self.cosines[i, j]
        if self.num_conflicts is not None:
            out[f"{prefix}num_conflicts"] = self.num_conflicts
        if self.skipped is not None:
            out[f"{prefix}skipped"] = jnp.asarray(self.skipped, jnp.int32)
        return out


def build_info(
    losses: Array,
    weights: Array,
    penalty: Optional[Array],
    gram: Optional[Array],
    *,
    task_grads: Any = None,
    aux: Any = None,
    names: Optional[tuple[str, ...]] = None,
) -> StepInfo:
    """Assemble a :class:`StepInfo`; ``total = sum_i w_i L_i + penalty``."""
    losses = jax.lax.stop_gradient(losses)
    dtype = base.compute_dtype(losses, weights)
    pen = jnp.zeros((), dtype) if penalty is None else jax.lax.stop_gradient(penalty).astype(dtype)
    total = jnp.sum(weights.astype(dtype) * losses.astype(dtype)) + pen
    info = StepInfo(
        losses=losses, weights=weights, total=total, penalty=pen, task_grads=task_grads,
        aux=aux, names=names,
    )
    if gram is not None:
        info = info.replace(
            gramian=gram,
            cosines=gramian_lib.cosine_matrix(gram),
            norms=gramian_lib.task_norms(gram),
            num_conflicts=gramian_lib.num_conflicts(gram),
        )
    return info


def _add_trees(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: (x + y).astype(x.dtype), a, b)


def value_and_grad(
    fn: Callable[..., Any],
    method: base.Weighting,
    *,
    has_aux: bool = False,
    strategy: jacobian_lib.Strategy = "batched",
    chunk_size: Optional[int] = None,
    shared: aggregate_lib.SharedSpec = None,
    return_task_grads: bool = False,
    diagnostics: bool = False,
    low_memory: bool = False,
    axis_name: Optional[str] = None,
    nan_policy: nan_lib.NanPolicy = "propagate",
) -> Callable[..., tuple[PyTree, StepInfo, Any]]:
    r"""Transform a multi-task loss function into a multi-task training gradient.

    For a loss function with task losses :math:`L_1..L_T` and an optional
    penalty :math:`R`, the returned function computes the method's weights
    :math:`w` and

    .. math::
        \text{grads} = \sum_i w_i \nabla L_i + \nabla R
        = \nabla\Big(\sum_i \mathrm{sg}(w_i) L_i + R\Big),
        \qquad \text{info.total} = \sum_i w_i L_i + R,

    (for per-coordinate methods such as GradDrop, ``grads`` is the method's own
    combination of the task gradients, plus :math:`\nabla R`). It computes only
    what the method needs:

    - loss-only methods: one forward and **one** backward pass of
      :math:`\sum_i \mathrm{sg}(w_i) L_i + R`; no per-task gradient exists;
    - Gramian and Jacobian methods: one forward pass and T backward passes
      (``strategy``), the Gramian over the ``shared`` parameters, then the
      weighted sum of the task gradients already in memory (no extra pass);
    - Gramian methods with ``low_memory=True``: one forward pass
      (``jax.linearize``), then for each task i one backward pass
      :math:`g_i = J^\top e_i` and one forward-mode pass :math:`G_{i,:} = J g_i`
      (``chunk_size`` tasks at a time, default 1), then one backward pass of
      :math:`\sum_i w_i L_i`. The T x P Jacobian never exists: the working
      memory is that of a plain step plus ``chunk_size`` gradients; the compute
      is about T extra forward-mode passes. Same weights as the default path
      to float tolerance.

    Task-specific parameters (leaves not selected by ``shared``) are excluded
    from the Gramian; they receive :math:`\sum_i w_i \nabla L_i` like every
    other leaf, which for a head used by task k alone is :math:`w_k \nabla L_k`.

    **Data parallel.** Inside ``jax.shard_map``, pass the mesh axis of the
    batch as ``axis_name``: the losses, the per-task gradients (or the Gramian
    rows and gradients of the low-memory path), the penalty and the returned
    gradient are averaged over that axis *before* the weighting, so every
    device computes the weights of the full batch and the same method state.
    (Averaging the directions each device would combine from its own shard is
    a different, wrong, answer: the weighting is nonlinear.) Replicated
    parameters are cast to device-varying first, so the implicit sum that
    ``shard_map`` adds to their derivatives does not happen twice.

    **Non-finite values** (``nan_policy``): ``"propagate"`` (default: no
    change to the numbers, like ``jax.grad``; ``info.finite`` and
    ``info.nonfinite_tasks`` still report); ``"skip"``: when any task loss,
    task gradient, weight, the penalty or the combined gradient is not finite,
    return zero gradients and the *input* method state and set
    ``info.skipped`` (pass parameters and optimizer state through
    :func:`mtopt.keep_if_skipped`); ``"raise"``: a ``FloatingPointError``
    naming the offending task(s), from a host callback (eagerly, and under
    ``jit``/``vmap``/``scan`` as a ``JaxRuntimeError`` carrying that message; a
    debugging mode: one device-to-host round trip per step). Tasks are blamed
    by their losses first: a NaN in one task's forward pass usually makes every
    task's gradient NaN. Loss-only methods never form per-task gradients, so a
    non-finite gradient with finite losses is reported for the combined
    gradient only; add ``diagnostics=True`` to attribute it to a task.

    Args:
      fn: ``fn(params, *args)`` returning the task losses: a (T,) vector, a
        sequence of scalars, a dict ``{name: scalar}`` (names are kept in
        ``info.names``), or :class:`mtopt.Objectives` to add a penalty; with
        ``has_aux=True``, a pair ``(losses, aux)``.
      method: a :class:`mtopt.Weighting`, e.g. ``mtopt.mgda()``.
      has_aux: whether ``fn`` returns auxiliary output (``info.aux``).
      strategy: how per-task gradients are computed when needed:
        ``"batched"`` (``vmap`` of the reverse pass) or ``"sequential"``
        (``lax.map``, one task gradient in flight at a time).
      chunk_size: tasks per reverse pass (see :func:`mtopt.task_jacobian`);
        with ``low_memory=True``, tasks per Gramian row batch.
      shared: which parameter leaves the Gramian is taken over (``None``: all;
        a callable ``(path, leaf) -> bool``; or a pytree of bools).
      return_task_grads: also return the per-task gradients in
        ``info.task_grads`` (forces the Jacobian for loss-only methods).
      diagnostics: compute the Gramian, norms and cosines for loss-only
        methods too (costs the per-task gradients, or the low-memory rows).
      low_memory: compute the Gramian without the Jacobian (see above). Not
        available for methods that read the Jacobian itself (MoCo, GradDrop,
        ...) nor with ``return_task_grads``.
      axis_name: the ``shard_map`` mesh axis the batch is split over, or
        ``None`` (one device, or ``jit`` with automatic sharding).
      nan_policy: ``"propagate"``, ``"skip"`` or ``"raise"`` (see above).

    Returns:
      ``step(params, state, *args, key=None, preference=None) -> (grads, info,
      new_state)`` where ``grads`` is shaped like ``params``, ``info`` is a
      :class:`mtopt.StepInfo` and ``new_state`` the method's next state.
      ``key`` is required by stochastic methods; ``preference`` is the (T,)
      preference vector of preference-driven methods.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import mtopt
      >>> def task_losses(params, x):
      ...     pred = x @ params
      ...     return {"a": jnp.mean((pred - 1.0) ** 2), "b": jnp.mean((pred + 1.0) ** 2)}
      >>> method = mtopt.linear([1.0, 0.2])
      >>> step = jax.jit(mtopt.value_and_grad(task_losses, method))
      >>> params, x = jnp.ones(3), jnp.ones((4, 3))
      >>> grads, info, state = step(params, method.init(2), x)
      >>> float(info.total), info.names
      (7.199999809265137, ('a', 'b'))
      >>> light = mtopt.value_and_grad(task_losses, mtopt.mgda(), low_memory=True)
      >>> full = mtopt.value_and_grad(task_losses, mtopt.mgda())
      >>> bool(jnp.allclose(light(params, mtopt.mgda().init(2), x)[1].gramian,
      ...                   full(params, mtopt.mgda().init(2), x)[1].gramian))
      True
    """
    jacobian_lib.check_strategy(strategy, chunk_size)
    nan_lib.check_policy(nan_policy)
    if not isinstance(method, base.Weighting):
        raise TypeError(
            f"method must be an mtopt.Weighting (e.g. mtopt.mgda()), got {type(method).__name__}."
        )
    if low_memory and method.needs is base.Needs.JACOBIAN:
        raise ValueError(
            f"low_memory=True computes the Gramian without the Jacobian, but {method.name} "
            "reads the Jacobian itself; use the default path for it."
        )
    if low_memory and return_task_grads:
        raise ValueError(
            "low_memory=True never forms the per-task gradients: it cannot be combined "
            "with return_task_grads=True."
        )
    average = data_parallel.mean_over(axis_name)

    def mean(tree: PyTree) -> PyTree:
        return tree if average is None else average(tree)

    def check_weights(weights: Any, num_tasks: int) -> Array:
        weights = jnp.asarray(weights)
        if weights.shape != (num_tasks,):
            raise ValueError(
                f"{method.name} returned weights of shape {weights.shape}, expected "
                f"({num_tasks},)."
            )
        return weights

    def loss_only(params, state, args, key, preference):
        fwd = jacobian_lib.forward(fn, params, *args, has_aux=has_aux)
        losses = mean(jax.lax.stop_gradient(fwd.losses))
        weights, new_state = method.update(state, losses, key=key, preference=preference)
        weights = check_weights(weights, losses.shape[0])
        grads = mean(fwd.pullback(jax.lax.stop_gradient(weights), jnp.ones((), losses.dtype)))
        penalty = None if fwd.penalty is None else mean(fwd.penalty)
        info = build_info(losses, weights, penalty, None, aux=fwd.aux, names=fwd.names)
        return grads, info, new_state, jnp.isfinite(losses)

    def light(params, state, args, key, preference):
        lin = low_memory_lib.linearize(fn, params, *args, has_aux=has_aux)
        losses = mean(jax.lax.stop_gradient(lin.losses))
        mask = aggregate_lib.shared_mask(params, shared)
        gram = low_memory_lib.gramian_rows(
            lin, mask, chunk_size=chunk_size, mean_over=average,
            dtype=base.compute_dtype(losses),
        )
        gram = jax.lax.stop_gradient(gram)
        if method.needs is base.Needs.LOSSES:
            weights, new_state = method.update(state, losses, key=key, preference=preference)
        else:  # same key use as aggregate(), so both paths draw the same numbers
            key_update = jax.random.split(key)[0] if key is not None else None
            weights, new_state = method.update(
                state, losses, gramian=gram, key=key_update, preference=preference
            )
        weights = check_weights(weights, losses.shape[0])
        grads = mean(lin.pullback(jax.lax.stop_gradient(weights), jnp.ones((), losses.dtype)))
        penalty = None if lin.penalty is None else mean(lin.penalty)
        info = build_info(losses, weights, penalty, gram, aux=lin.aux, names=lin.names)
        return grads, info, new_state, nan_lib.task_finite(losses, nan_lib.gramian_rows_finite(gram))

    def full(params, state, args, key, preference):
        fwd = jacobian_lib.forward(fn, params, *args, has_aux=has_aux)
        losses = mean(jax.lax.stop_gradient(fwd.losses))
        num_tasks = losses.shape[0]
        dtype = losses.dtype
        eye = jnp.eye(num_tasks, dtype=dtype)
        zeros = jnp.zeros((num_tasks,), dtype)
        with_penalty = fwd.penalty is not None
        if with_penalty:  # one more row for the penalty gradient, in the same batch
            eye = jnp.concatenate([eye, jnp.zeros((1, num_tasks), dtype)])
            zeros = jnp.concatenate([zeros, jnp.ones((1,), dtype)])
        rows = mean(
            jacobian_lib.pull_rows(
                fwd.pullback, eye, zeros, strategy=strategy, chunk_size=chunk_size
            )
        )
        jac = jax.tree.map(lambda r: r[:num_tasks], rows) if with_penalty else rows
        mask = aggregate_lib.shared_mask(params, shared)
        if method.needs is base.Needs.LOSSES:
            gram = gramian_lib.gramian(aggregate_lib.select(jac, mask, True))
            weights, new_state = method.update(state, losses, key=key, preference=preference)
            weights = check_weights(weights, num_tasks)
            grads = gramian_lib.combine(jac, weights)
        else:
            agg = aggregate_lib.aggregate(
                method, state, losses, jac, mask=mask, key=key, preference=preference
            )
            weights, new_state, gram, grads = agg.weights, agg.state, agg.gramian, agg.direction
        if with_penalty:
            grads = _add_trees(grads, jax.tree.map(lambda r: r[num_tasks], rows))
        penalty = None if fwd.penalty is None else mean(fwd.penalty)
        info = build_info(
            losses,
            weights,
            penalty,
            gram,
            task_grads=jac if return_task_grads else None,
            aux=fwd.aux,
            names=fwd.names,
        )
        return grads, info, new_state, nan_lib.task_finite(losses, nan_lib.rows_finite(jac, num_tasks))

    def step(
        params: PyTree,
        state: Any,
        *args: Any,
        key: Optional[Array] = None,
        preference: Optional[Array] = None,
    ) -> tuple[PyTree, StepInfo, Any]:
        if method.stochastic:
            base.check_key(key, method.name)
        local_params = data_parallel.make_local(params, axis_name)
        wants_gramian = method.needs is not base.Needs.LOSSES or diagnostics
        if low_memory and wants_gramian:
            path = light
        elif wants_gramian or return_task_grads:
            path = full
        else:
            path = loss_only
        grads, info, new_state, task_ok = path(local_params, state, args, key, preference)
        grads, info, new_state = nan_lib.apply_policy(
            nan_policy, grads, info, new_state, state, task_ok
        )
        return grads, info, new_state

    return step
