r"""A whole Pareto front in one compiled program: K training runs, vmapped and scanned."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from mtopt._src import base, objectives
from mtopt._src import step as step_lib
from mtopt.pareto import _preferences

Array = jax.Array
PyTree = Any


class SweepResult(NamedTuple):
    """What :func:`sweep` returns; every field has a leading run axis ``K``.

    Attributes:
      params: the final parameters of every run, shaped like one run's parameters
        with a leading ``K`` axis on every leaf.
      losses: ``(K, T)`` task losses at the final parameters.
      history: ``(K, R, T)`` task losses recorded every ``record_every`` steps, or
        ``None`` without ``record_every``. Record ``j`` holds the losses at the
        parameters *before* step ``j * record_every`` (so record 0 is the start
        point); ``R = ceil(num_steps / record_every)``.
      weights: ``(K, R, T)`` the method's task weights at the same steps, or ``None``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> import mtopt
      >>> from mtopt import pareto, problems
      >>> zdt1 = problems.zdt1(n_var=3)
      >>> result = pareto.sweep(zdt1, mtopt.tchebycheff(), jnp.full(3, 0.5),
      ...     optimizer=optax.adam(1e-2), num_steps=5,
      ...     preferences=pareto.uniform_preferences(4), bounds=zdt1.bounds)
      >>> result.params.shape, result.losses.shape, result.history is None
      ((4, 3), (4, 2), True)
    """

    params: PyTree
    losses: Array
    history: Optional[Array]
    weights: Optional[Array]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"sweep: {name} must be an int >= {minimum}, got {value!r}.")
    return value


def _leading_size(tree: PyTree) -> int:
    """The common leading axis of every leaf of ``tree`` (``batched_params=True``)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("sweep: init_params has no array leaves.")
    sizes = set()
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                "sweep: with batched_params=True every leaf of init_params needs a leading "
                "run axis K, got a scalar leaf."
            )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(
            "sweep: with batched_params=True every leaf of init_params needs the same leading "
            f"run axis K, got leading sizes {sorted(sizes)}."
        )
    return sizes.pop()


def _check_bounds(bounds: Any) -> Optional[tuple[Any, Any]]:
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(
            "sweep: bounds must be a pair (lower, upper), e.g. problem.bounds, got "
            f"{type(bounds).__name__}."
        )
    return bounds[0], bounds[1]


def _project(params: PyTree, bounds: Optional[tuple[Any, Any]]) -> PyTree:
    """Clip ``params`` into the box: bounds shaped like ``params`` or one array for all."""
    if bounds is None:
        return params
    lower, upper = bounds
    structure = jax.tree.structure(params)

    def clip(p: Array, lo: Any, hi: Any) -> Array:
        return jnp.clip(p, jnp.asarray(lo, p.dtype), jnp.asarray(hi, p.dtype))

    if jax.tree.structure(lower) == structure and jax.tree.structure(upper) == structure:
        return jax.tree.map(clip, params, lower, upper)
    return jax.tree.map(lambda p: clip(p, lower, upper), params)


def _task_losses(loss_fn: Callable[..., Any], params: PyTree, args: Sequence[Any]) -> Array:
    losses = objectives.parse_objectives(loss_fn(params, *args))[0].losses
    return losses


def sweep(
    loss_fn: Callable[..., Any],
    method: base.Weighting,
    init_params: PyTree,
    *,
    optimizer: Any,
    num_steps: int,
    preferences: Optional[Array] = None,
    batched_params: bool = False,
    args: Sequence[Any] = (),
    key: Optional[Array] = None,
    record_every: Optional[int] = None,
    bounds: Optional[tuple[Any, Any]] = None,
    shared: Any = None,
) -> SweepResult:
    r"""Train K runs of one multi-task problem at once: ``jax.vmap`` over runs of a ``lax.scan``.

    Run ``k`` starts from ``init_params`` (or ``init_params[k]``), initialises the
    method (``method.init(T, params)``) and the optimizer, and repeats ``num_steps``
    times

    .. math::
        g = \sum_i w_i(\theta, r_k)\, \nabla_\theta L_i(\theta), \qquad
        \theta \leftarrow \Pi_{[\ell, u]}\big(\theta + \mathrm{optimizer}(g)\big),

    where the weights come from :func:`mtopt.value_and_grad` with
    ``preference = preferences[k]`` and :math:`\Pi` is the optional clip into the box
    ``bounds`` (projected gradient descent, as LibMOON's gradient solvers clamp their
    solutions to the problem's box). All K runs, every step and the final evaluation
    are one compiled XLA program: a ``lax.scan`` over steps, ``jax.vmap``-ed over runs.
    With K preference vectors spread over the simplex the K final points trace the
    Pareto front (preference sets: :func:`mtopt.pareto.uniform_preferences`,
    :func:`mtopt.pareto.das_dennis`, :func:`mtopt.pareto.dirichlet`); with
    ``batched_params=True`` and no preferences the K runs are K start points (or
    seeds) of one method.

    Conventions pinned:

    - Randomness: run ``k`` uses ``run_key = jax.random.split(key, K)[k]`` and step
      ``t`` (from 0) passes ``key = jax.random.fold_in(run_key, t)`` to the method, so
      a sweep reproduces K separate runs made with those keys. ``key`` is required by
      stochastic methods (RLW, PCGrad, ...) and ignored otherwise.
    - The optimizer step runs under standard dtype promotion, so ``optax.adam``
      also works when the caller enables strict promotion; parameters keep their
      dtypes.
    - Method state: each run has its own; it is not returned. A method's
      ``after_step`` (``famo(lagged=False)``) is called after every step with the
      losses at the new parameters (one more forward pass); a method that needs
      ``end_epoch`` calls (``dwa(steps_per_epoch="manual")``) is refused, since a
      sweep has no epochs (give ``steps_per_epoch``).
    - ``losses`` are evaluated at the final (projected) parameters, after the last step.
    - Several devices: pass ``preferences`` (or batched ``init_params``) sharded along the
      run axis, e.g. ``jax.device_put(prefs, NamedSharding(mesh, PartitionSpec("runs")))``;
      XLA's SPMD partitioner then splits the runs between the devices and the outputs come
      back sharded the same way (K a multiple of the device count).

    The function traces and compiles on every call (``loss_fn``, ``method`` and
    ``optimizer`` are closed over); to reuse the compiled program for other
    preferences or start points, wrap the call in ``jax.jit`` with those as arguments.

    Args:
      loss_fn: ``loss_fn(params, *args)`` returning the T task losses in any form
        :func:`mtopt.value_and_grad` accepts (a vector, a sequence, a dict,
        :class:`mtopt.Objectives`). A :class:`mtopt.problems.Problem` is one
        (``problem(x)``).
      method: a :class:`mtopt.Weighting`; preference methods read ``preferences[k]``.
        Methods with a Gramian need it over all parameters unless ``shared`` says
        otherwise.
      init_params: the start parameters (any pytree), shared by every run; with
        ``batched_params=True``, every leaf has a leading run axis ``K``.
      optimizer: an optax ``GradientTransformation``, e.g. ``optax.adam(1e-2)``.
      num_steps: steps per run, at least 1.
      preferences: ``(K, T)`` preference vectors, one per run, or ``None`` (then
        ``batched_params=True`` sets K, and ``preference=None`` is passed). Only for
        methods that read a preference (``method.preference`` is ``"required"`` or
        ``"optional"``): for any other method the K runs would be identical, so it is an
        error. Concrete values are checked before anything runs (see Raises); under
        ``jax.jit`` (traced preferences) an invalid row gives NaN weights in its run.
      batched_params: whether ``init_params`` carries a leading run axis.
      args: extra arguments of ``loss_fn`` (a data batch...), shared by every run.
      key: a PRNG key (see above).
      record_every: record the losses and weights every this many steps (``None``:
        no history; at most ``num_steps``).
      bounds: ``(lower, upper)`` box to clip the parameters into after every step,
        e.g. ``problem.bounds``: arrays shaped like one run's parameters (for array
        parameters), pytrees shaped like them, or scalars. ``None``: no projection.
      shared: which parameter leaves the Gramian is taken over (see
        :func:`mtopt.value_and_grad`).

    Returns:
      A :class:`SweepResult` ``(params, losses, history, weights)``.

    Raises:
      ValueError: when ``preferences`` is not ``(K, T)`` for the loss function's T
        tasks, when neither ``preferences`` nor ``batched_params`` gives K, when the
        leading axes disagree, for a stochastic method without ``key``, for
        ``preferences`` given to a method that reads none (or missing for one that
        requires them), and for a concrete row that is not a valid preference of the
        method (for the Pareto methods: a negative or non-finite entry, or a sum off 1 by
        more than ``1e-3``); the message names the row, e.g. ``preferences[1]``;
        and for a method that needs ``end_epoch`` calls.

    Example:
      Eleven points of the ZDT1 front with Tchebycheff, in one program:

      >>> import jax, jax.numpy as jnp, optax
      >>> import mtopt
      >>> from mtopt import pareto, problems
      >>> zdt1 = problems.zdt1(n_var=5)
      >>> prefs = pareto.uniform_preferences(11, margin=0.05)
      >>> result = pareto.sweep(zdt1, mtopt.tchebycheff(), jnp.full(5, 0.5),
      ...     optimizer=optax.adam(1e-2), num_steps=500, preferences=prefs,
      ...     bounds=zdt1.bounds)
      >>> result.losses.shape
      (11, 2)
      >>> f = result.losses
      >>> bool(jnp.isfinite(f).all() & pareto.non_dominated_mask(f).all())
      True
      >>> float(pareto.hypervolume(f, zdt1.ref_point)) > 1.0  # the true front's: 1.10
      True

      A flax ``nnx`` multi-task model: split it, sweep its ``nnx.Param`` state like
      any pytree, merge run ``k`` back into a model:

      >>> from flax import nnx
      >>> class TwoHeads(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.trunk = nnx.Linear(3, 16, rngs=rngs)
      ...         self.heads = nnx.Linear(16, 2, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.heads(jax.nn.tanh(self.trunk(x)))
      >>> graphdef, params = nnx.split(TwoHeads(nnx.Rngs(0)))
      >>> x = jax.random.normal(jax.random.key(1), (32, 3))
      >>> y = jnp.stack([jnp.sin(x[:, 0]), jnp.cos(x[:, 1])], axis=1)
      >>> def task_losses(params, x, y):
      ...     pred = nnx.merge(graphdef, params)(x)
      ...     return jnp.mean((pred - y) ** 2, axis=0)  # one MSE per head
      >>> result = pareto.sweep(task_losses, mtopt.epo(), params,
      ...     optimizer=optax.adam(1e-2), num_steps=50, args=(x, y),
      ...     preferences=pareto.uniform_preferences(4, margin=0.1), record_every=10)
      >>> result.history.shape
      (4, 5, 2)
      >>> model_0 = nnx.merge(graphdef, jax.tree.map(lambda leaf: leaf[0], result.params))
      >>> model_0(x).shape
      (32, 2)
    """
    base.check_weighting(method, "sweep", "mtopt.epo()")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "sweep: optimizer must be an optax GradientTransformation (with init and update), "
            f"got {type(optimizer).__name__}."
        )
    _check_int(num_steps, "num_steps", 1)
    if record_every is not None:
        _check_int(record_every, "record_every", 1)
        if record_every > num_steps:
            raise ValueError(
                f"sweep: record_every ({record_every}) must be at most num_steps ({num_steps})."
            )
    args = tuple(args)
    bounds = _check_bounds(bounds)
    if method.stochastic and key is None:
        raise ValueError(
            f"sweep: {method.name} draws randomness and needs key=jax.random.key(seed); each "
            "run and each step get their own key split from it."
        )

    num_runs = None
    if batched_params:
        num_runs = _leading_size(init_params)
        one_params = jax.tree.map(lambda leaf: leaf[0], init_params)
    else:
        one_params = init_params
    losses_shape = jax.eval_shape(lambda p: _task_losses(loss_fn, p, args), one_params)
    num_tasks = losses_shape.shape[0]

    if preferences is not None:
        preferences = jnp.asarray(preferences)
        if preferences.ndim != 2 or preferences.shape[1] != num_tasks:
            raise ValueError(
                f"sweep: preferences must have shape (K, T) = (K, {num_tasks}), one preference "
                f"vector per run for the loss function's {num_tasks} tasks; got shape "
                f"{preferences.shape}."
            )
        if not jnp.issubdtype(preferences.dtype, jnp.floating):
            raise TypeError(f"sweep: preferences must be floating, got {preferences.dtype}.")
        if num_runs is not None and num_runs != preferences.shape[0]:
            raise ValueError(
                f"sweep: init_params has a leading run axis of {num_runs} but there are "
                f"{preferences.shape[0]} preference vectors."
            )
        num_runs = preferences.shape[0]
    # Preferences are concrete here (unless sweep itself is traced): check them now,
    # naming the bad row; inside the compiled runs an invalid one gives NaN weights.
    _preferences.check_driver_preferences(method, preferences, "sweep")
    if num_runs is None:
        raise ValueError(
            "sweep: the number of runs K is unknown; pass preferences of shape (K, T) or "
            "init_params with a leading run axis and batched_params=True."
        )
    if num_runs < 1:
        raise ValueError("sweep: there must be at least one run (K >= 1).")

    # What the method needs from its driver: the losses after each step, on the same
    # (full-batch) arguments, are one more forward pass; there are no epochs.
    base.check_driver_can_run(method, "sweep", after_step=True, epochs=False)
    run_keys = None if key is None else jax.random.split(key, num_runs)
    grad_fn = step_lib.value_and_grad(loss_fn, method, shared=shared)

    def run(params: PyTree, preference: Optional[Array], run_key: Optional[Array]):
        dtypes = jax.tree.map(lambda leaf: jnp.asarray(leaf).dtype, params)

        def one_step(carry, _):
            params, opt_state, method_state, t = carry
            step_key = None if run_key is None else jax.random.fold_in(run_key, t)
            grads, info, method_state = grad_fn(
                params, method_state, *args, key=step_key, preference=preference
            )
            new_params, opt_state = base.optax_step(optimizer, grads, opt_state, params)
            new_params = jax.tree.map(lambda p, d: p.astype(d), new_params, dtypes)
            new_params = _project(new_params, bounds)
            if method.after_step is not None:
                after = jax.lax.stop_gradient(_task_losses(loss_fn, new_params, args))
                method_state = method.after_step(method_state, after)
            return (new_params, opt_state, method_state, t + 1), (info.losses, info.weights)

        def silent_steps(carry, count: int):
            if count == 0:
                return carry
            return jax.lax.scan(lambda c, x: (one_step(c, x)[0], None), carry, length=count)[0]

        def recorded_chunk(carry, length: int):
            carry, record = one_step(carry, None)
            return silent_steps(carry, length - 1), record

        carry = (params, optimizer.init(params), method.init(num_tasks, params),
                 jnp.zeros((), jnp.int32))
        history = weights = None
        if record_every is None:
            carry = silent_steps(carry, num_steps)
        else:
            full, rest = divmod(num_steps, record_every)
            carry, (history, weights) = jax.lax.scan(
                lambda c, _: recorded_chunk(c, record_every), carry, length=full
            )
            if rest:
                carry, (last_h, last_w) = recorded_chunk(carry, rest)
                history = jnp.concatenate([history, last_h[None]], axis=0)
                weights = jnp.concatenate([weights, last_w[None]], axis=0)
        final = carry[0]
        return final, _task_losses(loss_fn, final, args), history, weights

    in_axes = (0 if batched_params else None, None if preferences is None else 0,
               None if run_keys is None else 0)
    params, losses, history, weights = jax.jit(jax.vmap(run, in_axes=in_axes))(
        init_params, preferences, run_keys
    )
    return SweepResult(params=params, losses=losses, history=history, weights=weights)
