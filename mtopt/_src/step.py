"""The training-gradient entry point: losses -> weights -> combined gradient."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import struct

from mtopt._src import aggregate as aggregate_lib
from mtopt._src import base, data_parallel, gramian as gramian_lib, jacobian as jacobian_lib
from mtopt._src import low_memory as low_memory_lib, nan_policy as nan_lib, options
from mtopt._src import structured as structured_lib

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
      solver: the :class:`mtopt.SolverInfo` of the method's iterative solver
        (iterations, accuracy certificate, ``converged``), taken from the new
        state's ``solver`` field; ``None`` for methods without one.

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
    solver: Optional[base.SolverInfo] = None

    def task_names(self) -> tuple[str, ...]:
        """The task names, or ``task0, task1, ...`` when none were given."""
        if self.names is not None:
            return self.names
        return tuple(f"task{i}" for i in range(self.losses.shape[-1]))

    def scalars(self, prefix: str = "") -> dict[str, Array]:
        """A flat ``{name: scalar}`` dict for any metric writer.

        Keys: ``total``, ``penalty``, ``loss/<task>``, ``weight/<task>``, and when
        the Gramian is known ``grad_norm/<task>``, ``cosine/<a>/<b>`` (a before
        b), ``num_conflicts``, ``skipped`` (0 or 1) when the step had a NaN
        policy, and ``solver/iterations``, ``solver/residual``,
        ``solver/converged`` (0 or 1) for methods with an iterative solver.
        Works on unbatched infos (call it outside ``vmap``).

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
        if self.solver is not None:
            out[f"{prefix}solver/iterations"] = self.solver.iterations
            out[f"{prefix}solver/residual"] = self.solver.residual
            out[f"{prefix}solver/converged"] = jnp.asarray(self.solver.converged, jnp.int32)
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
    solver: Optional[base.SolverInfo] = None,
) -> StepInfo:
    """Assemble a :class:`StepInfo`; ``total = sum_i w_i L_i + penalty``."""
    losses = jax.lax.stop_gradient(losses)
    dtype = base.compute_dtype(losses, weights)
    pen = jnp.zeros((), dtype) if penalty is None else jax.lax.stop_gradient(penalty).astype(dtype)
    total = jnp.sum(weights.astype(dtype) * losses.astype(dtype)) + pen
    info = StepInfo(
        losses=losses, weights=weights, total=total, penalty=pen, task_grads=task_grads,
        aux=aux, names=names, solver=solver,
    )
    if gram is not None:
        info = info.replace(
            gramian=gram,
            cosines=gramian_lib.cosine_matrix(gram),
            norms=gramian_lib.task_norms(gram),
            num_conflicts=gramian_lib.num_conflicts(gram),
        )
    return info


class Produced(NamedTuple):
    """What every producer of the step pipeline hands to the one aggregation.

    Attributes:
      losses: (T,) task losses (stop-gradiented, averaged over ``axis_name``).
      penalty: the penalty, or ``None``.
      names: the task names (sorted), or ``None``.
      given_order: a loss dict's keys in the order the function produced them,
        when not sorted; else ``None``.
      aux: the loss function's auxiliary output.
      gramian: (T, T) Gramian over the shared leaves, or ``None`` when not formed.
      jacobian: the per-task gradients (all leaves, leading task axis) on the
        paths that form them, else ``None``.
      task_grads: what ``info.task_grads`` reports when asked for.
      grads_ok: (T,) finiteness of each task's gradient (or Gramian row), or
        ``None`` when no per-task gradient exists.
      pull: ``pull(weights, shared_weights) -> grads``: the combined gradient
        ``sum_i w_i grad L_i + grad R``, with ``shared_weights`` on the shared
        leaves (the same array object as ``weights`` when no method rescales
        them), averaged over ``axis_name``.
      mask: the shared-leaf mask (for the Jacobian path's ``combine``).
      penalty_grads: the penalty's gradient on the Jacobian path (added to a
        ``combine`` direction), or ``None``.
    """

    losses: Array
    penalty: Optional[Array]
    names: Optional[tuple[str, ...]]
    given_order: Optional[tuple[str, ...]]
    aux: Any
    gramian: Optional[Array]
    jacobian: Optional[PyTree]
    task_grads: Any
    grads_ok: Optional[Array]
    pull: Callable[[Array, Array], PyTree]
    mask: Optional[PyTree] = None
    penalty_grads: Optional[PyTree] = None


def pull_split(
    pullback: Callable[[Array, Array], PyTree],
    mask: PyTree,
    weights: Array,
    shared_weights: Array,
) -> PyTree:
    """``pullback(w, 1)``, with ``shared_weights`` for the ``mask``-selected leaves.

    One reverse pass when ``shared_weights is weights``; otherwise the two
    cotangents run as one batched reverse pass and the leaves are picked.
    """
    one = jnp.ones((), weights.dtype)
    if shared_weights is weights:
        return pullback(weights, one)
    both = jax.vmap(pullback)(jnp.stack([shared_weights, weights]), jnp.stack([one, one]))
    first = jax.tree.map(lambda x: x[0], both)
    second = jax.tree.map(lambda x: x[1], both)
    return aggregate_lib.merge(first, second, mask)


def preference_vector(
    preference: Any, names: Optional[tuple[str, ...]], method: str
) -> Optional[Array]:
    """A preference given by task name (a dict) as a vector in the task order."""
    if not isinstance(preference, Mapping):
        return preference
    if names is None:
        raise ValueError(
            f"{method}: the preference was given by task name ({sorted(preference)}) but the "
            "loss function returns unnamed losses; return a dict of losses or pass a vector."
        )
    base.check_task_names(tuple(str(k) for k in preference), names, method, "preference")
    return jnp.stack([jnp.asarray(preference[n]) for n in names])


def check_task_order(
    method: base.Weighting, produced: Produced, preference: Any, positional_preference: bool
) -> None:
    """Refuse positional per-task options when the loss dict is not in sorted order.

    Tasks are ordered by sorted name; a loss dict built in another order means
    the caller may have written positional weights or preferences in that other
    order, which would land on the wrong tasks.
    """
    if method.task_names is not None:
        if produced.names is None:
            raise ValueError(
                f"{method.name} was built with per-task options by name "
                f"{list(method.task_names)}, but the loss function returns unnamed losses; "
                "return a dict {name: loss}."
            )
        base.check_task_names(method.task_names, produced.names, method.name, "options")
    given = produced.given_order
    if given is None:
        return
    what = []
    if method.positional:
        what.append(f"the per-task options of {method.name}")
    if positional_preference and preference is not None:
        what.append("the preference vector")
    if what:
        raise ValueError(
            f"The loss dict's keys come in the order {list(given)}, but mtopt orders tasks by "
            f"sorted name {list(produced.names)} (jax.jit, jax.checkpoint and jax.tree.map "
            f"return dicts with sorted keys), so {' and '.join(what)}, given by position, "
            "would land on other tasks than written. Give them by task name (a dict, e.g. "
            f"mtopt.linear({{{given[0]!r}: ...}})) or build the loss dict in sorted order."
        )


def finish(
    method: base.Weighting,
    state: Any,
    produced: Produced,
    *,
    key: Optional[Array],
    preference: Any,
    return_task_grads: bool,
    nan_policy: str,
) -> tuple[PyTree, StepInfo, Any]:
    """The one aggregation of the pipeline: the method's update (one key split, one
    weights check), the combined gradient, one :class:`StepInfo`, one NaN policy."""
    positional = preference is not None and not isinstance(preference, Mapping)
    check_task_order(method, produced, preference, positional)
    preference = preference_vector(preference, produced.names, method.name)
    losses = produced.losses
    jac_shared = None
    if produced.jacobian is not None and method.needs is base.Needs.JACOBIAN:
        jac_shared = aggregate_lib.select(produced.jacobian, produced.mask, True)
    weights, new_state, shared_weights, key_combine = aggregate_lib.run_update(
        method, state, losses, gramian=produced.gramian, jacobian=jac_shared, key=key,
        preference=preference,
    )
    w = jax.lax.stop_gradient(weights)
    ws = w if shared_weights is weights else jax.lax.stop_gradient(shared_weights)
    if method.combine is not None:
        if produced.jacobian is None:
            raise ValueError(f"{method.name} combines the Jacobian itself; this path has none.")
        direction = aggregate_lib.jacobian_direction(
            method, produced.jacobian, produced.mask, w, ws, new_state, key_combine
        )
        grads = direction
        if produced.penalty_grads is not None:
            grads = _add_trees(grads, produced.penalty_grads)
    else:
        grads = produced.pull(w, ws)
    info = build_info(
        losses, weights, produced.penalty, produced.gramian,
        task_grads=produced.task_grads if return_task_grads else None,
        aux=produced.aux, names=produced.names, solver=base.state_solver_info(new_state),
    )
    task_ok = jnp.isfinite(losses)
    if produced.grads_ok is not None:
        task_ok = nan_lib.task_finite(losses, produced.grads_ok)
    return nan_lib.apply_policy(nan_policy, grads, info, new_state, state, task_ok)


def _add_trees(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: (x + y).astype(x.dtype), a, b)


class StepConfig(NamedTuple):
    """What a producer of the step pipeline needs to know, fixed when the step is built.

    Attributes:
      fn: the loss function.
      has_aux: whether it returns ``(losses, aux)``.
      strategy, chunk_size: how the per-task reverse passes run.
      shared: which leaves the Gramian is taken over.
      average: the mean over the data-parallel axis, or ``None``.
      wants_gramian: whether the method (or ``diagnostics=True``) reads the Gramian.
      needs_jacobian: whether the per-task gradients are formed (the Gramian, a
        Jacobian method or ``return_task_grads=True``).
      micro_batches: the number of micro-batches the batch is split into, or ``None``.
    """

    fn: Callable[..., Any]
    has_aux: bool
    strategy: jacobian_lib.Strategy
    chunk_size: Optional[int]
    shared: aggregate_lib.SharedSpec
    average: Optional[Callable[[PyTree], PyTree]]
    wants_gramian: bool
    needs_jacobian: bool = False
    micro_batches: Optional[int] = None

    def mean(self, tree: PyTree) -> PyTree:
        return tree if self.average is None else self.average(tree)

    def fields(self, out: Any, losses: Array) -> dict[str, Any]:
        """The fields of :class:`Produced` every path fills the same way."""
        penalty = None if out.penalty is None else self.mean(out.penalty)
        return dict(losses=losses, penalty=penalty, names=out.names,
                    given_order=out.given_order, aux=out.aux)


def produce_loss_only(config: StepConfig, params: PyTree, args: tuple, kwargs: dict) -> Produced:
    """One forward pass; the combined gradient is one reverse pass of the weighted loss."""
    fwd = jacobian_lib.forward(config.fn, params, *args, has_aux=config.has_aux, kwargs=kwargs)
    losses = config.mean(jax.lax.stop_gradient(fwd.losses))
    mask = aggregate_lib.shared_mask(params, config.shared)
    pull = lambda w, ws: config.mean(pull_split(fwd.pullback, mask, w, ws))  # noqa: E731
    return Produced(**config.fields(fwd, losses), gramian=None, jacobian=None, task_grads=None,
                    grads_ok=None, pull=pull, mask=mask)


def produce_low_memory(config: StepConfig, params: PyTree, args: tuple, kwargs: dict) -> Produced:
    """``jax.linearize``; the Gramian row by row (one reverse and one forward-mode pass per
    task); the combined gradient by one reverse pass. No Jacobian."""
    lin = low_memory_lib.linearize(config.fn, params, *args, has_aux=config.has_aux,
                                   kwargs=kwargs)
    losses = config.mean(jax.lax.stop_gradient(lin.losses))
    mask = aggregate_lib.shared_mask(params, config.shared)
    gram = low_memory_lib.gramian_rows(
        lin, mask, chunk_size=config.chunk_size, mean_over=config.average,
        dtype=base.compute_dtype(losses),
    )
    gram = jax.lax.stop_gradient(gram)
    pull = lambda w, ws: config.mean(pull_split(lin.pullback, mask, w, ws))  # noqa: E731
    return Produced(**config.fields(lin, losses), gramian=gram, jacobian=None, task_grads=None,
                    grads_ok=nan_lib.gramian_rows_finite(gram), pull=pull, mask=mask)


def produce_full_jacobian(
    config: StepConfig, params: PyTree, args: tuple, kwargs: dict
) -> Produced:
    """One forward pass, T reverse passes (the Jacobian, and the penalty's gradient as one
    more row of the same batch), the Gramian over the shared leaves; the combined
    gradient is the weighted sum of the rows already in memory."""
    fwd = jacobian_lib.forward(config.fn, params, *args, has_aux=config.has_aux, kwargs=kwargs)
    losses = config.mean(jax.lax.stop_gradient(fwd.losses))
    num_tasks = losses.shape[0]
    dtype = losses.dtype
    eye = jnp.eye(num_tasks, dtype=dtype)
    zeros = jnp.zeros((num_tasks,), dtype)
    with_penalty = fwd.penalty is not None
    if with_penalty:  # one more row for the penalty gradient, in the same batch
        eye = jnp.concatenate([eye, jnp.zeros((1, num_tasks), dtype)])
        zeros = jnp.concatenate([zeros, jnp.ones((1,), dtype)])
    rows = config.mean(
        jacobian_lib.pull_rows(
            fwd.pullback, eye, zeros, strategy=config.strategy, chunk_size=config.chunk_size
        )
    )
    jac = jax.tree.map(lambda r: r[:num_tasks], rows) if with_penalty else rows
    mask = aggregate_lib.shared_mask(params, config.shared)
    gram = None
    if config.wants_gramian:
        gram = gramian_lib.gramian(aggregate_lib.select(jac, mask, True))
    penalty_grads = jax.tree.map(lambda r: r[num_tasks], rows) if with_penalty else None

    def pull(w: Array, ws: Array) -> PyTree:
        grads = aggregate_lib.weighted_sum(jac, mask, w, ws)
        if with_penalty:
            grads = _add_trees(grads, penalty_grads)
        return grads

    return Produced(**config.fields(fwd, losses), gramian=gram, jacobian=jac, task_grads=jac,
                    grads_ok=nan_lib.rows_finite(jac, num_tasks), pull=pull, mask=mask,
                    penalty_grads=penalty_grads)


def produce_structured(
    config: StepConfig, params: PyTree, args: tuple, kwargs: dict
) -> Produced:
    """One forward pass, T reverse passes through the activations only (batched), the
    Gramian per layer from its inputs and output cotangents; the combined gradient
    is one weight-gradient product per layer (see :mod:`mtopt._src.structured`)."""
    mask = aggregate_lib.shared_mask(params, config.shared)
    engine = structured_lib.run(
        config.fn, params, args, kwargs, has_aux=config.has_aux, mask=mask,
        wants_gramian=config.wants_gramian, average=config.average,
    )
    losses = config.mean(jax.lax.stop_gradient(engine.losses))
    gram = engine.gramian
    penalty = None if engine.penalty is None else config.mean(engine.penalty)
    return Produced(losses=losses, penalty=penalty, names=engine.names,
                    given_order=engine.given_order, aux=engine.aux, gramian=gram,
                    jacobian=None, task_grads=None,
                    grads_ok=None if gram is None else nan_lib.gramian_rows_finite(gram),
                    pull=engine.pull, mask=mask)


GRAMIAN_PATHS = ("auto", "jacobian", "structured", "low_memory")
# gramian="auto" takes the structured engine when the kernel formula gives at least this
# share of the Gramian's parameters (benchmarks/gramian_benchmark.py: 1.5-1.9x faster steps
# than the Jacobian path on a 2.1M-parameter MLP, 3.8x on a 21M one; where every block is
# explicit, as for convolutions or 1,024 rows of 128 features, 1.15-1.4x slower).
KERNEL_SHARE_FOR_STRUCTURED = 0.5


def produce_auto(config: StepConfig, params: PyTree, args: tuple, kwargs: dict) -> Produced:
    """``gramian="auto"`` for a Gramian method: decided once per trace, from the shapes."""
    share = structured_lib.kernel_share(
        config.fn, params, args, kwargs, has_aux=config.has_aux,
        mask=aggregate_lib.shared_mask(params, config.shared))
    if share >= KERNEL_SHARE_FOR_STRUCTURED:
        return produce_structured(config, params, args, kwargs)
    return produce_full_jacobian(config, params, args, kwargs)


def auto_can_be_structured(
    method: base.Weighting, *, return_task_grads: bool, micro_batches: Optional[int],
    axis_name: Optional[str], strategy: str, chunk_size: Optional[int],
) -> bool:
    """Whether ``gramian="auto"`` may choose the structured engine: a Gramian method,
    no per-task gradients asked for (``return_task_grads``, ``micro_batches``), no
    Jacobian options set, and no data-parallel axis (where every block is explicit)."""
    return (method.needs is base.Needs.GRAMIAN and not return_task_grads
            and micro_batches is None and axis_name is None and strategy == "batched"
            and chunk_size is None)


def check_step_inputs(method: base.Weighting, state: Any, key: Any) -> None:
    """Checks every path runs before tracing the loss function."""
    if state is None:
        raise ValueError(
            f"{method.name}: state is None; pass the state returned by method.init(num_tasks) "
            "(and then the new state each step returns)."
        )
    if method.stochastic:
        base.check_key(key, method.name)


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
    trainable: jacobian_lib.Trainable = None,
    micro_batches: Optional[int] = None,
    gramian: str = "auto",
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

    **Task order.** A dict of losses is ordered by sorted task name, whatever
    order the function builds it in (``jax.jit``, ``jax.checkpoint`` and
    ``jax.tree.map`` return dicts with sorted keys, so no other order survives
    every transform): ``info.names``, ``info.weights`` and every per-task
    option follow it. Per-task options can be given by name
    (``mtopt.linear({"seg": 1.0, "depth": 0.1})``, ``preference={"seg": 0.7,
    "depth": 0.3}``) and are then checked against the loss names; positional
    ones (a list or vector) are refused when the loss dict comes in
    non-sorted order, because they would land on other tasks than written.

    **Checks.** The state must be the one ``method.init(T)`` made (every state
    knows its T; a (B,) per-example loss vector fed to a state made for one
    task is an error), every array leaf differentiated must be floating (an
    integer array is refused with its path: pass ``trainable=``), a
    ``preference=`` given to a method that reads none is an error, and so is a
    pair ``(losses, acc)`` returned without ``has_aux=True`` when ``acc`` is not
    a floating scalar (a pair of two float scalars is read as two tasks).

    **The loop around it.** Thread the returned state into the next step. Every
    method runs as itself with that alone at its default options; two
    non-default forms also need a call from the loop, declared on the method
    (:class:`mtopt.Weighting`): ``state = method.after_step(state,
    new_losses)`` after the parameter step, with the losses re-evaluated on the
    same batch (``famo(lagged=False)``), and ``state = method.end_epoch(state)``
    after each epoch (``dwa(steps_per_epoch="manual")``).

    Args:
      fn: ``fn(params, *args, **kwargs)`` returning the task losses: a (T,)
        vector, a sequence of scalars, a dict ``{name: scalar}`` (ordered by
        sorted name; names kept in ``info.names``), or
        :class:`mtopt.Objectives` to add a penalty; with ``has_aux=True``, a
        pair ``(losses, aux)``.
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
        ``info.task_grads`` (forces the Jacobian for loss-only methods, but
        not the Gramian: ``info.gramian`` stays ``None`` unless the method
        reads it or ``diagnostics=True``).
      diagnostics: compute the Gramian, norms and cosines for loss-only
        methods too (costs the per-task gradients, or the low-memory rows).
      low_memory: compute the Gramian without the Jacobian (see above). Not
        available for methods that read the Jacobian itself (MoCo, GradDrop,
        ...) nor with ``return_task_grads``.
      axis_name: the ``shard_map`` mesh axis the batch is split over, or
        ``None`` (one device, or ``jit`` with automatic sharding).
      nan_policy: ``"propagate"``, ``"skip"`` or ``"raise"`` (see above).
      trainable: which leaves of ``params`` are differentiated, a predicate on
        leaves. Default: every array leaf and Python float; other leaves
        (activation functions, strings, Python ints of an equinox module) reach
        ``fn`` unchanged and get ``None`` in ``grads``, as with
        ``equinox.filter_grad``. ``trainable=eqx.is_inexact_array`` also passes
        integer arrays through (by default they are an error: they cannot be
        trained).
      micro_batches: gradient accumulation: split every positional argument
        (every leaf, along its leading batch axis) into this many equal
        micro-batches and process one at a time (``lax.scan``); keyword
        arguments reach every micro-batch whole. Gramian and Jacobian methods
        accumulate the per-task gradients and form the Gramian once, of the
        accumulated gradients (not the sum of the micro-batch Gramians; memory:
        the T x P Jacobian plus one micro-batch); loss-only methods take the
        weights from the whole batch's losses (one forward scan), then
        accumulate the gradient of the weighted loss (memory: one gradient;
        cost: one extra forward pass per micro-batch). With task losses that
        are means over the batch, the step equals the full-batch step.
        ``info.aux`` stacks the micro-batches' aux outputs. Not with
        ``low_memory=True``, which never forms the per-task gradients that
        the accumulated Gramian needs.
      gramian: how Gramian methods get the Gramian; the three exact ways give
        the same Gramian and gradient to float rounding. ``"jacobian"``: the T
        per-task gradients, then their inner products. ``"low_memory"``: the
        same as ``low_memory=True``. ``"structured"``: one forward pass and T
        reverse passes through the *activations* only; each layer's block from
        its inputs :math:`x` and output cotangents :math:`d_i` (a dense layer's
        as :math:`\langle d_i, (x x^\top) d_j\rangle` when that is cheaper than
        its explicit per-task gradients; convolutions, embeddings, ``lax.scan``
        bodies and any other layer by their explicit per-task gradients, one
        layer at a time), and the update as one weight-gradient product per
        layer. The layers are found in the function's jaxpr: nothing to tag.
        ``"auto"`` (the default): for a Gramian method, the structured engine
        when the kernel formula covers at least half of the Gramian's
        parameters at the model's shapes (1.5-1.9x faster than ``"jacobian"``
        on the benchmark's 2.1M-parameter MLP, 3.8x on a 21M one), else
        ``"jacobian"``; always
        ``"jacobian"`` for Jacobian methods, ``return_task_grads``,
        ``micro_batches``, a non-default ``strategy`` / ``chunk_size`` and under
        ``axis_name``. ``"structured"`` and ``"low_memory"`` are refused for
        Jacobian methods, ``return_task_grads`` and (with a Gramian)
        ``micro_batches``; under ``axis_name`` the structured engine forms every
        block from the explicit per-task gradients, averaged over the axis.

    Returns:
      ``step(params, state, *args, key=None, preference=None, **kwargs) ->
      (grads, info, new_state)`` where ``grads`` is shaped like ``params``,
      ``info`` is a :class:`mtopt.StepInfo` and ``new_state`` the method's next
      state. ``key`` is required by stochastic methods (it is split once:
      the first half for ``update``, the second for ``combine``, on every
      path); ``preference`` is the (T,) preference vector of preference-driven
      methods, or a dict by task name; other keyword arguments reach ``fn``.

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
    for flag, value in (("has_aux", has_aux), ("return_task_grads", return_task_grads),
                        ("diagnostics", diagnostics), ("low_memory", low_memory)):
        options.boolean(value, flag, "value_and_grad")
    base.check_weighting(method, "value_and_grad")
    path = options.choice(gramian, "gramian", "value_and_grad", GRAMIAN_PATHS)
    if low_memory:
        if path not in ("auto", "low_memory"):
            raise ValueError(
                f"low_memory=True is gramian='low_memory'; it cannot be combined with "
                f"gramian={path!r}."
            )
        path = "low_memory"
    what = {"low_memory": "low_memory=True (gramian='low_memory') computes the Gramian "
                          "without the Jacobian",
            "structured": "gramian='structured' computes the Gramian from the layer inputs "
                          "and output cotangents, without the per-task gradients"}.get(path)
    if what and method.needs is base.Needs.JACOBIAN:
        raise ValueError(
            f"{what}, but {method.name} reads the Jacobian itself; use gramian='jacobian' "
            "(the default for it)."
        )
    if what and return_task_grads:
        raise ValueError(
            f"{what}: it never forms the per-task gradients, so it cannot be combined with "
            "return_task_grads=True."
        )
    aggregate_lib.check_shared_spec(shared)
    micro_batches = options.optional_integer(micro_batches, "micro_batches", "value_and_grad")
    wants_gramian = method.needs is not base.Needs.LOSSES or diagnostics
    if micro_batches is not None and what and wants_gramian:
        raise ValueError(
            f"micro_batches with gramian={path!r}: the Gramian of the accumulated gradients "
            "needs the accumulated per-task gradients (T x P), which this path never forms, "
            "and the sum of the micro-batch Gramians is a different matrix. Use "
            "gramian='jacobian' (it holds the T x P accumulated Jacobian) or fewer, larger "
            "micro-batches."
        )
    if path == "auto":
        path = "auto" if auto_can_be_structured(
            method, return_task_grads=return_task_grads, micro_batches=micro_batches,
            axis_name=axis_name, strategy=strategy, chunk_size=chunk_size) else "jacobian"
    config = StepConfig(
        fn=fn, has_aux=has_aux, strategy=strategy, chunk_size=chunk_size, shared=shared,
        average=data_parallel.mean_over(axis_name), wants_gramian=wants_gramian,
        needs_jacobian=wants_gramian or return_task_grads, micro_batches=micro_batches,
    )
    if micro_batches is not None:
        from mtopt._src import micro_batch  # it builds on this module's pipeline

        produce = micro_batch.produce
    elif path == "low_memory" and config.wants_gramian:
        produce = produce_low_memory
    elif path == "structured" and config.wants_gramian:
        produce = produce_structured
    elif path == "auto" and config.wants_gramian:
        produce = produce_auto
    elif config.wants_gramian or return_task_grads:
        produce = produce_full_jacobian
    else:
        produce = produce_loss_only

    def step(
        params: PyTree,
        state: Any,
        *args: Any,
        key: Optional[Array] = None,
        preference: Optional[Array] = None,
        **kwargs: Any,
    ) -> tuple[PyTree, StepInfo, Any]:
        check_step_inputs(method, state, key)
        diff, merge = jacobian_lib.split_trainable(params, trainable)
        jacobian_lib.check_float_params(diff)
        data_parallel.check_axis_name(axis_name)
        local_params = data_parallel.make_local(diff, axis_name)
        call = config if merge is None else config._replace(
            fn=lambda d, *a, **k: fn(merge(d), *a, **k))
        produced = produce(call, local_params, args, kwargs)
        return finish(method, state, produced, key=key, preference=preference,
                      return_task_grads=return_task_grads, nan_policy=nan_policy)

    return step
