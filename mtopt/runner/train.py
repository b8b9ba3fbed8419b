"""Train every seed of one method on one task in one compiled program."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import mtopt
from mtopt._src import aggregate, base, nan_policy
from mtopt.pareto import _preferences as pareto_preferences

Array = jax.Array
PyTree = Any

__all__ = ["RunResult", "effective_options", "single_task_baseline", "train"]

_HISTORY_FILE = "runner_history.json"
_PROGRESS_HINT = (
    "The progress bar needs tqdm, an optional dependency: pip install 'mtopt[examples]' "
    "(or pass progress=False / --no-progress)."
)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Everything :func:`train` measured, for every seed.

    Shapes use ``S`` seeds, ``C`` evaluation points (one per chunk of
    ``eval_every`` steps, the last chunk possibly shorter) and ``T`` tasks.

    Attributes:
      task: the task's name.
      method: the registry name of the method.
      method_options: the options the method was built with, including the ones
        the runner filled in (see :func:`effective_options`).
      seeds: the seeds, in the order of the leading axis of every array.
      task_names: the task names, in the order of the last axis.
      metric_names: the metric of each task.
      higher_is_better: per task, whether a larger metric is better.
      settings: steps, batch size, learning rate, eval_every, preference.
      eval_steps: (C,) the step count at each evaluation point.
      train_loss: (S, C, T) mean training loss of each task over the chunk
        (mini-batch losses at the parameters before each step).
      weights: (S, C, T) mean weights the method put on the tasks over the chunk.
      val_metrics: (S, C, T) validation metric of each task at each evaluation point.
      cosines: (S, C, T, T) pairwise cosines of the task gradients over the shared
        parameters, on a fixed validation batch, at each evaluation point.
      test_metrics: (S, T) test metric of each task at the final parameters.
      params: final parameters (``nnx.State``), every leaf with a leading seed axis.
      opt_state: final optimiser state, leading seed axis.
      method_state: final method state, leading seed axis.
      seconds: wall-clock time of the call (compilation included).
      resumed_from: the checkpoint step the run resumed from, or ``None``.

    Example:
      >>> import mtopt.tasks
      >>> from mtopt import runner
      >>> task = mtopt.tasks.get_task("gradnorm", num_tasks=2)
      >>> result = runner.train(task, "equal", seeds=[0, 1], steps=4, eval_every=2,
      ...                       progress=False)
      >>> result.test_metrics.shape, result.train_loss.shape
      ((2, 2), (2, 2, 2))
    """

    task: str
    method: str
    method_options: dict[str, Any]
    seeds: tuple[int, ...]
    task_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    higher_is_better: tuple[bool, ...]
    settings: dict[str, Any]
    eval_steps: np.ndarray
    train_loss: np.ndarray
    weights: np.ndarray
    val_metrics: np.ndarray
    cosines: np.ndarray
    test_metrics: np.ndarray
    params: PyTree = dataclasses.field(repr=False)
    opt_state: PyTree = dataclasses.field(repr=False)
    method_state: PyTree = dataclasses.field(repr=False)
    seconds: float = 0.0
    resumed_from: Optional[int] = None

    def history(self) -> dict[str, Any]:
        """The per-chunk records as nested lists (JSON-ready)."""
        return {
            "eval_steps": self.eval_steps.tolist(),
            "train_loss": _json_floats(self.train_loss),
            "weights": _json_floats(self.weights),
            "val_metrics": _json_floats(self.val_metrics),
            "cosines": _json_floats(self.cosines),
        }


def _json_floats(array: Any) -> Any:
    """Nested lists of floats, with ``None`` for NaN / infinities (valid JSON)."""
    array = np.asarray(array, np.float64)
    flat = [float(v) if math.isfinite(v) else None for v in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()


def _check_task(task: Any) -> None:
    missing = [
        a
        for a in ("name", "task_names", "metric_names", "higher_is_better", "train", "val",
                  "test", "make_model", "losses", "metrics", "is_shared")
        if not hasattr(task, a)
    ]
    if missing:
        raise TypeError(
            f"task must be an mtopt.tasks.Task (e.g. mtopt.tasks.get_task('multidigits')); "
            f"{type(task).__name__} lacks {missing}."
        )


def _num_examples(split: Mapping[str, Array]) -> int:
    return int(jax.tree.leaves(split)[0].shape[0])


def effective_options(
    method: str,
    options: Optional[Mapping[str, Any]],
    *,
    num_tasks: int,
    steps_per_epoch: int,
    preference: Sequence[float],
) -> dict[str, Any]:
    """The method's options with the runner's defaults for what the factory requires.

    By option, whatever the method (no method name is special-cased):

    - a required ``weights`` option (``linear``): all ones.
    - a ``steps_per_epoch`` option that was not given (DWA): one epoch is
      ``ceil(num_train / batch_size)`` steps.
    - a required ``preferences`` option (``pmtl``): the T simplex vertices and
      the run's preference (the target, passed at every step since ``index``
      stays ``None``).

    Options the user gave are never changed.

    Args:
      method: the registry name.
      options: the user's options (``None``: none).
      num_tasks: number of tasks T.
      steps_per_epoch: steps in one pass over the training set.
      preference: (T,) the run's preference vector.

    Returns:
      The options to build the method with.

    Example:
      >>> from mtopt.runner import effective_options
      >>> effective_options("dwa", {}, num_tasks=2, steps_per_epoch=10, preference=[0.5, 0.5])
      {'steps_per_epoch': 10}
    """
    opts = dict(options or {})
    info = mtopt.method_info(method)
    required = info.required_options()
    if "weights" in required and "weights" not in opts:
        opts["weights"] = [1.0] * num_tasks
    if "steps_per_epoch" in info.options() and opts.get("steps_per_epoch") is None:
        opts["steps_per_epoch"] = steps_per_epoch
    if "preferences" in required and "preferences" not in opts:
        rows = np.vstack([np.eye(num_tasks), np.asarray(preference, np.float64)[None]])
        opts["preferences"] = rows.tolist()
    return opts


def _stack(trees: Sequence[PyTree]) -> PyTree:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class _Program:
    """The jitted, seed-vmapped pieces of one run: training chunks, evaluation."""

    def __init__(
        self,
        task: Any,
        weighting: base.Weighting,
        graphdef: Any,
        template_params: PyTree,
        optimizer: optax.GradientTransformation,
        *,
        batch_size: int,
        num_train: int,
        steps_per_epoch: int,
    ):
        self.task = task
        self.names = tuple(task.task_names)
        self.weighting = weighting
        self.graphdef = graphdef
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.num_train = num_train
        self.steps_per_epoch = steps_per_epoch
        self.mask = aggregate.shared_mask(template_params, task.is_shared)
        self.grad_fn = mtopt.value_and_grad(self._objectives, weighting, shared=task.is_shared)
        self._chunks: dict[int, Callable[..., Any]] = {}
        self.evaluate = jax.jit(jax.vmap(self._metric_vector, in_axes=(0, 0, None)))

    # --- single-seed functions (vmapped below) --------------------------------------------

    def _model(self, params: PyTree, rest: PyTree) -> nnx.Module:
        return nnx.merge(self.graphdef, params, rest)

    def _raw_losses(self, params: PyTree, rest: PyTree, batch: Mapping[str, Array]) -> Any:
        out = self.task.losses(self._model(params, rest), batch)
        if isinstance(out, mtopt.Objectives):
            return out.losses, out.penalty
        return out, None

    def _objectives(self, params: PyTree, rest: PyTree, batch: Mapping[str, Array]) -> Any:
        losses, penalty = self._raw_losses(params, rest, batch)
        vector = jnp.stack([jnp.asarray(losses[n]) for n in self.names])
        return mtopt.Objectives(vector, penalty=penalty)

    def loss_vector(self, params: PyTree, rest: PyTree, batch: Mapping[str, Array]) -> Array:
        losses, _ = self._raw_losses(params, rest, batch)
        return jnp.stack([jnp.asarray(losses[n]) for n in self.names])

    def _metric_vector(self, params: PyTree, rest: PyTree, split: Mapping[str, Array]) -> Array:
        values = self.task.metrics(self._model(params, rest), split)
        return jnp.stack([jnp.asarray(values[n]).astype(jnp.float32) for n in self.names])

    def _cosines(self, params: PyTree, rest: PyTree, batch: Mapping[str, Array]) -> Array:
        _, jac, _ = mtopt.task_jacobian(lambda p: self.loss_vector(p, rest, batch))(params)
        gram = mtopt.gramian(aggregate.select(jac, self.mask, True))
        return mtopt.cosine_matrix(gram).astype(jnp.float32)

    def _step(self, carry: Any, step: Array, seed_key: Array, rest: PyTree,
              train_data: Mapping[str, Array], preference: Array) -> Any:
        params, opt_state, state = carry
        batch_key, method_key = jax.random.split(jax.random.fold_in(seed_key, step))
        idx = jax.random.randint(batch_key, (self.batch_size,), 0, self.num_train)
        batch = jax.tree.map(lambda a: a[idx], train_data)
        grads, info, state = self.grad_fn(
            params, state, rest, batch,
            key=method_key if self.weighting.stochastic else None,
            preference=preference,
        )
        params, opt_state = base.optax_step(self.optimizer, grads, opt_state, params)
        # What the method declares it needs from its driver (base.Weighting).
        if self.weighting.after_step is not None:
            after = jax.lax.stop_gradient(self.loss_vector(params, rest, batch))
            state = self.weighting.after_step(state, after)
        if self.weighting.end_epoch is not None:
            last = (step + 1) % self.steps_per_epoch == 0
            state = nan_policy.select_tree(last, self.weighting.end_epoch(state), state)
        record = (info.losses.astype(jnp.float32), info.weights.astype(jnp.float32))
        return (params, opt_state, state), record

    def _chunk(self, params, opt_state, state, seed_key, rest, start, train_data, val_data,
               cos_batch, preference, *, length: int):
        steps = start + jnp.arange(length, dtype=jnp.int32)
        carry, (losses, weights) = jax.lax.scan(
            lambda c, s: self._step(c, s, seed_key, rest, train_data, preference),
            (params, opt_state, state),
            steps,
        )
        val = self._metric_vector(carry[0], rest, val_data)
        cos = self._cosines(carry[0], rest, cos_batch)
        return carry, jnp.mean(losses, axis=0), jnp.mean(weights, axis=0), val, cos

    # --- seed-vmapped, jitted -------------------------------------------------------------

    def chunk(self, length: int) -> Callable[..., Any]:
        """The compiled chunk of ``length`` steps (one program per distinct length)."""
        if length not in self._chunks:
            fn = jax.vmap(
                lambda *a: self._chunk(*a, length=length),
                in_axes=(0, 0, 0, 0, 0, None, None, None, None, None),
            )
            self._chunks[length] = jax.jit(fn)
        return self._chunks[length]

    def shared_template(self, params: PyTree) -> PyTree:
        """The shared leaves of ``params`` (``None`` elsewhere): MoCo-style buffers' shape."""
        return aggregate.select(params, self.mask, True)


def _settings_match(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = [k for k in current if k != "steps"]
    return [k for k in keys if saved.get(k) != current[k]]


def _load_history(directory: Path, settings: Mapping[str, Any], step: int) -> list[dict]:
    path = directory / _HISTORY_FILE
    if not path.exists():
        raise ValueError(
            f"{directory} holds a checkpoint at step {step} but no {_HISTORY_FILE}: it was not "
            "written by mtopt.runner.train."
        )
    saved = json.loads(path.read_text())
    differ = _settings_match(saved["settings"], settings)
    if differ:
        details = ", ".join(
            f"{k}: saved {saved['settings'].get(k)!r}, now {settings[k]!r}" for k in differ
        )
        raise ValueError(f"Cannot resume from {directory}: the settings differ ({details}).")
    return [c for c in saved["chunks"] if c["step"] <= step]


def _write_history(directory: Path, settings: Mapping[str, Any], chunks: list[dict]) -> None:
    path = directory / _HISTORY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "chunks": chunks}))
    os.replace(tmp, path)


def _progress_bar(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as err:
        raise ImportError(_PROGRESS_HINT) from err
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)


def train(
    task: Any,
    method: str,
    method_options: Optional[Mapping[str, Any]] = None,
    *,
    seeds: Sequence[int] = (0,),
    steps: int = 500,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    eval_every: int = 100,
    optimizer: Optional[optax.GradientTransformation] = None,
    preference: Optional[Sequence[float]] = None,
    cosine_batch_size: int = 256,
    checkpoint_dir: Union[str, Path, None] = None,
    resume: bool = False,
    progress: bool = True,
) -> RunResult:
    r"""Train one registry method on a task, every seed at once.

    All seeds run in **one compiled program**: parameters, optimiser state, method
    state and keys carry a leading seed axis and each chunk of ``eval_every``
    steps is a ``jax.lax.scan`` under ``jax.vmap`` over seeds, followed in the same
    program by the evaluation (validation metrics and task-gradient cosines).
    One step of seed :math:`s` at step :math:`t` (counted from 0):

    .. math::
        k = \mathrm{fold\_in}(\mathrm{key}(s), t), \quad
        B \sim \mathcal{U}\{\text{train}\}^{b}\ (\text{with replacement, from } k), \quad
        g = \sum_i w_i \nabla L_i^B(\theta)\ \text{(the method's combination)}, \quad
        \theta \leftarrow \theta + \mathrm{optimizer}(g).

    Conventions pinned:

    - Parameters of seed ``s``: ``nnx.split(task.make_model(nnx.Rngs(s)), nnx.Param, ...)``;
      the non-parameter state (if any) is kept fixed.
    - Gradient: ``mtopt.value_and_grad(losses, mtopt.method(method, **options),
      shared=task.is_shared)``: Gramian and Jacobian methods see the shared (trunk)
      parameters only. Optimiser: ``optax.adam(learning_rate)`` unless ``optimizer``
      is given, stepped with standard dtype promotion.
    - Stochastic methods get the second half of the step key; methods that require a
      preference (``Weighting.preference == "required"``) get ``preference`` (default
      uniform :math:`1/T`), those that take an optional one get it only when it is
      given, and giving one to a method that reads none is an error. It is checked
      before training (finite, and for the Pareto methods non-negative and summing
      to 1 within 1e-3); ``settings["preference"]`` records it (the default too).
      Methods that keep gradient-shaped buffers (MoCo, DB-MTL, ExcessMTL) are
      initialised with the shared-parameter template.
    - What a method declares it needs from its driver is honoured for every
      method alike: ``method.after_step`` (``famo(lagged=False)``) is called
      after each parameter step with the losses re-evaluated on the same batch,
      ``method.end_epoch`` (``dwa(steps_per_epoch="manual")``) after the last
      step of every epoch (``ceil(num_train / batch_size)`` steps).
    - Records per chunk: mean mini-batch training loss and mean weights over the
      chunk's steps, then validation metrics and the pairwise cosines of the task
      gradients over the shared parameters on the first ``cosine_batch_size``
      validation examples (so loss-only methods do not pay for per-task gradients
      at every step). Test metrics at the final parameters.
    - Batches and keys depend only on (seed, step), so a resumed run sees the same
      batches. With ``checkpoint_dir``, ``(params, opt_state, method_state, step,
      keys)`` is saved with :mod:`mtopt.checkpoint` after every chunk (the history
      goes to ``runner_history.json`` next to it); ``resume=True`` restores the
      latest checkpoint and continues up to ``steps`` (which may be larger than
      the interrupted run's). On CPU the final parameters, optimiser and method
      states are bit-identical to an uninterrupted run's; so is the history when
      the interruption fell on a multiple of ``eval_every`` (chunks end at
      multiples of ``eval_every`` and at ``steps``). Without ``resume`` an existing
      checkpoint in the directory is an error (nothing is overwritten).

    Args:
      task: an :class:`mtopt.tasks.Task`.
      method: a registry name (:func:`mtopt.method_names`).
      method_options: keyword options of the method's factory; the runner fills in
        the ones a factory requires (:func:`effective_options`).
      seeds: one run per seed, vmapped.
      steps: number of training steps.
      batch_size: mini-batch size.
      learning_rate: Adam's learning rate (ignored when ``optimizer`` is given).
      eval_every: steps per chunk (one evaluation after each chunk).
      optimizer: an optax transformation instead of ``optax.adam(learning_rate)``.
      preference: (T,) preference vector passed to the method at every step.
      cosine_batch_size: validation examples used for the gradient cosines.
      checkpoint_dir: where to save checkpoints (``None``: no checkpoints).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if any.
      progress: show a tqdm progress bar over steps (needs tqdm).

    Returns:
      A :class:`RunResult`.

    Raises:
      ValueError: unknown method or option (the message lists the valid ones), bad
        settings, or a checkpoint that does not match the run.

    Example:
      >>> import mtopt.tasks
      >>> from mtopt.runner import train
      >>> task = mtopt.tasks.get_task("gradnorm", num_train=64, num_val=16, num_test=16)
      >>> result = train(task, "mgda", seeds=[0, 1], steps=4, batch_size=8, eval_every=2,
      ...                progress=False)
      >>> result.train_loss.shape, result.test_metrics.shape
      ((2, 2, 2), (2, 2))
    """
    start_time = time.perf_counter()
    _check_task(task)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}.")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    mtopt.method_info(method)  # raises a ValueError listing the valid names
    names = tuple(task.task_names)
    num_tasks = len(names)
    num_train = _num_examples(task.train)
    given_preference = preference
    if preference is None:
        preference = [1.0 / num_tasks] * num_tasks
    preference = [float(p) for p in np.asarray(preference, np.float64).reshape(-1)]
    if len(preference) != num_tasks:
        raise ValueError(
            f"preference must have one entry per task ({num_tasks}: {names}), got "
            f"{len(preference)}."
        )
    steps_per_epoch = max(1, math.ceil(num_train / batch_size))
    options = effective_options(
        method, method_options, num_tasks=num_tasks, steps_per_epoch=steps_per_epoch,
        preference=preference,
    )
    weighting = mtopt.method(method, **options)
    # Preference check (issue 11, item 16): the values are known here, so check them
    # eagerly; only methods that read a preference get one (giving one to another
    # method is an error), the uniform default only to those that require one.
    step_preference = preference
    if given_preference is None and weighting.preference != "required":
        step_preference = None
    pareto_preferences.check_driver_preferences(
        weighting, step_preference, "train", name="preference"
    )
    if optimizer is None:
        optimizer = optax.adam(learning_rate)

    # Models, one per seed, stacked along a leading seed axis.
    splits = [nnx.split(task.make_model(nnx.Rngs(s)), nnx.Param, ...) for s in seeds]
    graphdef = splits[0][0]
    params = _stack([p for _, p, _ in splits])
    rest = _stack([r for _, _, r in splits])
    program = _Program(
        task, weighting, graphdef, splits[0][1], optimizer,
        batch_size=batch_size, num_train=num_train,
        steps_per_epoch=steps_per_epoch,
    )
    opt_state = jax.vmap(optimizer.init)(params)
    method_state = jax.vmap(lambda p: weighting.init(num_tasks, program.shared_template(p)))(
        params
    )
    keys = jnp.stack([jax.random.key(s) for s in seeds])

    settings = {
        "task": task.name, "method": method, "method_options": _jsonable(options),
        "seeds": list(seeds), "steps": steps, "batch_size": batch_size,
        "learning_rate": learning_rate, "eval_every": eval_every, "preference": preference,
        "cosine_batch_size": cosine_batch_size,
    }
    chunks: list[dict] = []
    step = 0
    resumed_from = None
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None:
        from mtopt import checkpoint

        directory.mkdir(parents=True, exist_ok=True)
        latest = checkpoint.latest_step(directory)
        if latest is not None and not resume:
            raise ValueError(
                f"{directory} already holds a checkpoint (step {latest}): pass resume=True "
                "(--resume) to continue it, or use an empty directory."
            )
        if latest is not None:
            if latest > steps:
                raise ValueError(
                    f"The checkpoint in {directory} is at step {latest}, past steps={steps}."
                )
            chunks = _load_history(directory, settings, latest)
            target = _checkpoint_tree(params, opt_state, method_state, 0, keys)
            restored = checkpoint.restore(directory, target, step=latest)
            params, opt_state, method_state = (
                restored["params"], restored["opt_state"], restored["method_state"],
            )
            keys = jax.random.wrap_key_data(restored["keys"])
            step = int(restored["step"])
            resumed_from = step

    val_data = dict(task.val)
    cos_batch = jax.tree.map(lambda a: a[: min(cosine_batch_size, _num_examples(val_data))],
                             val_data)
    train_data = dict(task.train)
    pref = None if step_preference is None else jnp.asarray(step_preference, jnp.float32)
    bar = _progress_bar(progress, steps, step, f"{task.name}/{method}")
    try:
        while step < steps:
            end = min((step // eval_every + 1) * eval_every, steps)
            chunk = program.chunk(end - step)
            (params, opt_state, method_state), loss, weights, val, cos = chunk(
                params, opt_state, method_state, keys, rest, jnp.asarray(step, jnp.int32),
                train_data, val_data, cos_batch, pref,
            )
            if bar is not None:
                bar.update(end - step)
            step = end
            chunks.append({
                "step": step,
                "train_loss": np.asarray(loss, np.float64).tolist(),
                "weights": np.asarray(weights, np.float64).tolist(),
                "val_metrics": np.asarray(val, np.float64).tolist(),
                "cosines": np.asarray(cos, np.float64).tolist(),
            })
            if directory is not None:
                _write_history(directory, settings, chunks)
                checkpoint.save(
                    directory, step,
                    _checkpoint_tree(params, opt_state, method_state, step, keys),
                )
    finally:
        if bar is not None:
            bar.close()

    test = np.asarray(program.evaluate(params, rest, dict(task.test)), np.float64)
    return RunResult(
        task=task.name,
        method=method,
        method_options=options,
        seeds=seeds,
        task_names=names,
        metric_names=tuple(task.metric_names),
        higher_is_better=tuple(bool(h) for h in task.higher_is_better),
        settings=settings,
        eval_steps=np.asarray([c["step"] for c in chunks], np.int64),
        train_loss=_history_array(chunks, "train_loss", (len(seeds), 0, num_tasks)),
        weights=_history_array(chunks, "weights", (len(seeds), 0, num_tasks)),
        val_metrics=_history_array(chunks, "val_metrics", (len(seeds), 0, num_tasks)),
        cosines=_history_array(chunks, "cosines", (len(seeds), 0, num_tasks, num_tasks)),
        test_metrics=test,
        params=params,
        opt_state=opt_state,
        method_state=method_state,
        seconds=time.perf_counter() - start_time,
        resumed_from=resumed_from,
    )


def _history_array(chunks: list[dict], key: str, empty_shape: tuple[int, ...]) -> np.ndarray:
    """Stack per-chunk (S, ...) records into (S, C, ...)."""
    if not chunks:
        return np.zeros(empty_shape, np.float64)
    stacked = np.asarray([np.asarray(c[key], np.float64) for c in chunks])  # (C, S, ...)
    return np.moveaxis(stacked, 0, 1)


def _checkpoint_tree(params, opt_state, method_state, step: int, keys: Array) -> dict:
    return {
        "params": params,
        "opt_state": opt_state,
        "method_state": method_state,
        "step": np.asarray(step, np.int32),
        "keys": jax.random.key_data(keys),
    }


def _jsonable(value: Any) -> Any:
    """Options as JSON-ready values (arrays to lists, tuples to lists)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def single_task_baseline(
    task: Any,
    *,
    seeds: Sequence[int] = (0,),
    steps: int = 500,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    eval_every: int = 100,
    optimizer: Optional[optax.GradientTransformation] = None,
    checkpoint_dir: Union[str, Path, None] = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    r"""Single-task learning: each task trained alone, the reference of :math:`\Delta_m`.

    For each task :math:`t` one run of :func:`train` with ``mtopt.linear(e_t)`` (one-hot
    weights: the trunk and head :math:`t` get :math:`\nabla L_t` only), every seed
    vmapped, same settings as the multi-task runs. The model still has every head
    (the other heads get zero gradient); only task :math:`t`'s test metric is kept.

    Args:
      task: an :class:`mtopt.tasks.Task`.
      seeds, steps, batch_size, learning_rate, eval_every, optimizer, progress: as in
        :func:`train`.
      checkpoint_dir: if given, task ``t`` checkpoints in ``checkpoint_dir/single_<t>``.
      resume: resume those checkpoints.

    Returns:
      ``{task_name: (S,) test metric per seed}``.

    Example:
      >>> import mtopt.tasks
      >>> from mtopt.runner import single_task_baseline
      >>> task = mtopt.tasks.get_task("gradnorm", num_train=64, num_val=16, num_test=16)
      >>> base = single_task_baseline(task, seeds=[0], steps=2, batch_size=8, eval_every=2,
      ...                             progress=False)
      >>> sorted(base) == sorted(task.task_names), base[task.task_names[0]].shape
      (True, (1,))
    """
    names = tuple(task.task_names)
    out: dict[str, np.ndarray] = {}
    for t, name in enumerate(names):
        weights = [1.0 if i == t else 0.0 for i in range(len(names))]
        result = train(
            task, "linear", {"weights": weights},
            seeds=seeds, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
            eval_every=eval_every, optimizer=optimizer,
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"single_{name}",
            resume=resume, progress=progress,
        )
        out[name] = result.test_metrics[:, t]
    return out
