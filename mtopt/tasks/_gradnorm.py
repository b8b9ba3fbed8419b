"""The synthetic multi-task regression of GradNorm (Chen et al., ICML 2018)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtopt.tasks import _metrics
from mtopt.tasks._task import (
    Task,
    TrunkHeads,
    check_batch,
    check_count,
    check_seed,
    is_trunk,
    mlp,
    streams,
    to_arrays,
)

Array = jax.Array

_INPUT_DIM = 250
_OUTPUT_DIM = 100
_B_STD = 10.0
_EPS_STD = 3.5
_WIDTH = 100
_DEPTH = 4


def default_sigmas(num_tasks: int) -> tuple[float, ...]:
    r"""Task scales :math:`\sigma_i = 100^{(i-1)/(T-1)}`: geometric from 1 to 100 (``(1.0,)`` if T = 1).

    For T = 2 this is ``(1, 100)``, the values of the public re-implementations.

    Example:
      >>> import mtopt.tasks
      >>> mtopt.tasks.default_sigmas(3)
      (1.0, 10.0, 100.0)
    """
    num_tasks = check_count(num_tasks, "num_tasks", "gradnorm")
    if num_tasks == 1:
        return (1.0,)
    return tuple(float(10.0 ** (2.0 * i / (num_tasks - 1))) for i in range(num_tasks))


def gradnorm_synthetic(
    num_tasks: int = 2,
    seed: int = 0,
    *,
    sigmas: Optional[Sequence[float]] = None,
    input_std: float = 0.01,
    num_train: int = 8_000,
    num_val: int = 1_000,
    num_test: int = 1_000,
) -> Task:
    r"""GradNorm's synthetic regression: T tasks that share structure but differ in scale.

    From Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, section 4.
    Task :math:`i` regresses

    .. math::
        f_i(x) = \sigma_i \tanh\big((B + \epsilon_i)\, x\big) \in \mathbb{R}^{100},
        \qquad x \in \mathbb{R}^{250},

    with :math:`B` shared by all tasks and :math:`\epsilon_i` task specific, entries
    IID :math:`B_{jk} \sim N(0, 10^2)` and :math:`\epsilon_{i,jk} \sim N(0, 3.5^2)`
    (the paper's :math:`N(0, 10)`, :math:`N(0, 3.5)` read as standard deviations, as
    every re-implementation does). The scales :math:`\sigma_i` make the losses differ
    by orders of magnitude: that imbalance is what the benchmark probes.

    Conventions pinned here (the paper does not state them):

    - ``sigmas``: default :func:`default_sigmas`, geometric from 1 to 100, which is
      ``(1, 100)`` for T = 2 as in the public re-implementations. The paper's
      values for T = 10 are not public; pass your own ``sigmas`` to change them.
    - Inputs: :math:`x \sim N(0, \text{input\_std}^2 I_{250})` with
      ``input_std = 0.01``, as the "MTRegression" re-implementation does, so the
      pre-activations have standard deviation about 1.6 and ``tanh`` is not
      saturated. (Another re-implementation draws :math:`x \sim U(-1, 1)^{250}`
      scaled to unit norm; there ``tanh`` saturates to nearly :math:`\pm 1`.)
      The splits store the **standardised** inputs :math:`z = x / \text{input\_std}
      \sim N(0, I)`, as one feeds a network; the targets are :math:`f_i(x)`.
    - Task :math:`i`'s function depends on ``seed`` and :math:`i` only: adding
      tasks leaves the first ones unchanged.

    Training loss: per-task MSE, mean over examples and the 100 outputs. Metric:
    the normalised error ``MSE_i / sigma_i^2`` (lower is better), comparable across
    tasks; ``chance`` is that metric on the test split for the prediction
    "training-mean output" (about the variance of :math:`\tanh(\cdot)`). With the
    default scales, 300 Adam steps (learning rate 3e-3, batch 128) of equal weighting
    leave ``task_0`` far *worse* than chance while MGDA leaves ``task_1`` at chance:
    the loss-scale imbalance the benchmark exposes.

    Model (as in the paper): a 4-layer ReLU trunk of width 100
    (250 -> 100 -> 100 -> 100 -> 100) and one affine ``Linear(100, 100)`` head per
    task: 55,400 + 10,100 T parameters.

    Args:
      num_tasks: T >= 1.
      seed: seeds :math:`B`, the :math:`\epsilon_i` and the inputs.
      sigmas: T positive task scales, or None for :func:`default_sigmas`.
      input_std: standard deviation of each input coordinate (> 0).
      num_train: training examples.
      num_val: validation examples.
      num_test: test examples.

    Returns:
      The :class:`Task` ``"gradnorm"`` with tasks ``"task_0" .. "task_{T-1}"`` (zero-padded,
      ``"task_00"``.., when T > 10, so that sorted names keep the task order); inputs
      ``x`` float32 (N, 250), targets float32 (N, 100).

    Raises:
      ValueError: for ``num_tasks < 1``, ``sigmas`` of the wrong length or not
        positive, ``input_std <= 0``, a negative seed or a non-positive split size.

    Example:
      >>> from flax import nnx
      >>> import mtopt.tasks
      >>> task = mtopt.tasks.gradnorm_synthetic(num_tasks=2, seed=0, num_train=64)
      >>> task.task_names, task.train["task_1"].shape
      (('task_0', 'task_1'), (64, 100))
      >>> [round(c, 2) for c in task.chance]  # mean predictor, MSE / sigma^2
      [0.58, 0.59]
      >>> model = task.make_model(nnx.Rngs(0))
      >>> {k: v.shape for k, v in model(task.test["x"][:5]).items()}
      {'task_0': (5, 100), 'task_1': (5, 100)}
    """
    name = "gradnorm"
    num_tasks = check_count(num_tasks, "num_tasks", name)
    seed = check_seed(seed, name)
    sizes = {
        "train": check_count(num_train, "num_train", name),
        "val": check_count(num_val, "num_val", name),
        "test": check_count(num_test, "num_test", name),
    }
    if sigmas is None:
        sigmas = default_sigmas(num_tasks)
    sigmas = tuple(float(s) for s in np.asarray(sigmas, np.float64).reshape(-1))
    if len(sigmas) != num_tasks:
        raise ValueError(
            f"gradnorm: sigmas must have one entry per task: expected {num_tasks}, got "
            f"{len(sigmas)}."
        )
    if not all(math.isfinite(s) and s > 0 for s in sigmas):
        raise ValueError(f"gradnorm: sigmas must be finite and > 0, got {sigmas}.")
    if not (
        isinstance(input_std, numbers.Real)
        and not isinstance(input_std, bool)
        and math.isfinite(input_std)
        and input_std > 0
    ):
        raise ValueError(f"gradnorm: input_std must be a finite float > 0, got {input_std!r}.")
    digits = len(str(num_tasks - 1))
    task_names = tuple(f"task_{i:0{digits}d}" for i in range(num_tasks))

    # Streams: 0 -> B, 1..3 -> inputs of train/val/test; each task's epsilon has its own
    # stream so that task i is the same function for every T.
    b_rng, *x_rngs = streams(seed, name, 4)
    shared = b_rng.normal(0.0, _B_STD, size=(_OUTPUT_DIM, _INPUT_DIM))
    weights = [
        shared + streams(seed, f"{name}/epsilon/{i}", 1)[0].normal(
            0.0, _EPS_STD, size=(_OUTPUT_DIM, _INPUT_DIM)
        )
        for i in range(num_tasks)
    ]
    splits = {}
    for (split, count), rng in zip(sizes.items(), x_rngs):
        z = rng.normal(0.0, 1.0, size=(count, _INPUT_DIM))  # standardised inputs
        data = {"x": z}
        for t, sigma, w in zip(task_names, sigmas, weights):
            data[t] = sigma * np.tanh(input_std * (z @ w.T))
        splits[split] = to_arrays(data)

    scale = {t: jnp.float32(s * s) for t, s in zip(task_names, sigmas)}

    def make_model(rngs: nnx.Rngs) -> TrunkHeads:
        trunk = mlp([_INPUT_DIM] + [_WIDTH] * _DEPTH, rngs)
        heads = {t: nnx.Linear(_WIDTH, _OUTPUT_DIM, rngs=rngs) for t in task_names}
        return TrunkHeads(trunk, heads)

    def losses(model: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
        check_batch(batch, ("x", *task_names), name)
        out = model(batch["x"])
        return {t: _metrics.mean_squared_error(out[t], batch[t]) for t in task_names}

    def metrics(model: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
        check_batch(batch, ("x", *task_names), name)
        out = model(batch["x"])
        return {
            t: _metrics.mean_squared_error(out[t], batch[t]) / scale[t] for t in task_names
        }

    chance = []
    for t, sigma in zip(task_names, sigmas):
        mean = np.mean(np.asarray(splits["train"][t], np.float64), axis=0)
        test = np.asarray(splits["test"][t], np.float64)
        chance.append(float(np.mean((test - mean) ** 2) / sigma**2))

    return Task(
        name=name,
        task_names=task_names,
        metric_names=("normalized_mse",) * num_tasks,
        higher_is_better=(False,) * num_tasks,
        chance=tuple(chance),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        make_model=make_model,
        losses=losses,
        metrics=metrics,
        is_shared=is_trunk,
    )
