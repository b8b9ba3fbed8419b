"""MultiMNIST-style two-digit classification built from scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

from typing import Any, Mapping

import jax
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
    sklearn_datasets,
    streams,
    to_arrays,
)

Array = jax.Array

_LAYOUTS = {"side_by_side": ("left", "right"), "overlay": ("top_left", "bottom_right")}
_POOL_FRACTIONS = (0.6, 0.2)  # train and validation shares of the source images; test: the rest
_OVERLAY_SHIFT = 2  # pixels between the two digits' corners along each axis (canvas 10 x 10)
_WIDTH = 128
_NUM_CLASSES = 10


def multidigits(
    seed: int = 0,
    *,
    layout: str = "side_by_side",
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
) -> Task:
    r"""Two digits per image, one classification task per digit (MultiMNIST at 8 x 8).

    The MultiMNIST protocol (Sabour et al., 2017; as a multi-task benchmark: Sener &
    Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018) at
    small scale, from the 1797 8 x 8 digits bundled with scikit-learn
    (``sklearn.datasets.load_digits``), so nothing is downloaded.

    Construction, deterministic for a seed (and the NumPy version):

    1. pixels are scaled from 0..16 to [0, 1];
    2. the source images are shuffled and cut into disjoint pools, 60% train,
       20% validation, 20% test, **before** pairing: no source image appears in
       two splits;
    3. each split draws ``num_*`` ordered pairs of two different images of its own
       pool, uniformly with replacement;
    4. ``layout="side_by_side"``: the pair is concatenated into an 8 x 16 image
       (tasks ``"left"``, ``"right"``); ``layout="overlay"``: the first digit is
       placed at the top-left corner and the second 2 pixels down and right of it
       on a 10 x 10 canvas, combined by the pixel-wise maximum as MultiMNIST does
       (tasks ``"top_left"``, ``"bottom_right"``; the digits overlap on 6 x 6 pixels;
       ``task_names`` lists them in sorted order, ``("bottom_right", "top_left")``, the
       task order of every mtopt step).

    Each task is 10-class classification with the softmax cross-entropy as training
    loss and the accuracy as metric (higher is better); ``chance`` is the frequency
    of the most common class of that task on the test split. Inputs ``x`` are
    float32 ``(N, 8, 16)`` or ``(N, 10, 10)``; labels int32 in ``0..9``.

    The model is an MLP trunk (flatten, then two ``Linear -> ReLU`` layers of width
    128) and one ``Linear(128, 10)`` head per task, about 35.6k parameters (the
    overlay trunk has fewer inputs: 32.0k); no batch norm or dropout, so
    ``nnx.split(model, nnx.Param)`` holds the whole state.

    Args:
      seed: seeds the pools and the pairs.
      layout: ``"side_by_side"`` or ``"overlay"``.
      num_train: number of training pairs.
      num_val: number of validation pairs.
      num_test: number of test pairs.

    Returns:
      The :class:`Task` ``"multidigits"``.

    Raises:
      ValueError: for an unknown layout, a negative seed or a non-positive split size.
      ImportError: if scikit-learn is not installed (``pip install "mtopt[examples]"``).

    Example:
      >>> from flax import nnx
      >>> import mtopt.tasks
      >>> task = mtopt.tasks.multidigits(seed=0, num_train=256, num_val=64, num_test=64)
      >>> task.task_names, task.train["x"].shape, task.train["left"].dtype
      (('left', 'right'), (256, 8, 16), dtype('int32'))
      >>> model = task.make_model(nnx.Rngs(0))
      >>> model(task.test["x"])["right"].shape
      (64, 10)
    """
    name = "multidigits"
    seed = check_seed(seed, name)
    if layout not in _LAYOUTS:
        raise ValueError(
            f"multidigits: unknown layout {layout!r}; valid layouts: {sorted(_LAYOUTS)}."
        )
    sizes = {
        "train": check_count(num_train, "num_train", name),
        "val": check_count(num_val, "num_val", name),
        "test": check_count(num_test, "num_test", name),
    }
    first_name, second_name = _LAYOUTS[layout]  # the first and the second digit's task
    task_names = tuple(sorted((first_name, second_name)))  # mtopt's task order
    images, labels = _load_digits()

    pool_rng, *pair_rngs = streams(seed, name, 4)
    order = pool_rng.permutation(len(images))
    n_train = round(_POOL_FRACTIONS[0] * len(images))
    n_val = round(_POOL_FRACTIONS[1] * len(images))
    pools = {
        "train": order[:n_train],
        "val": order[n_train:n_train + n_val],
        "test": order[n_train + n_val:],
    }
    splits = {}
    for (split, pool), rng in zip(pools.items(), pair_rngs):
        first, second = _draw_pairs(pool, sizes[split], rng)
        splits[split] = to_arrays({
            "x": _compose(images[first], images[second], layout),
            first_name: labels[first],
            second_name: labels[second],
        })

    num_inputs = int(np.prod(splits["train"]["x"].shape[1:]))

    def make_model(rngs: nnx.Rngs) -> TrunkHeads:
        trunk = mlp([num_inputs, _WIDTH, _WIDTH], rngs)
        heads = {t: nnx.Linear(_WIDTH, _NUM_CLASSES, rngs=rngs) for t in task_names}
        return TrunkHeads(trunk, heads)

    def losses(model: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
        check_batch(batch, ("x", *task_names), name)
        out = model(batch["x"])
        return {t: _metrics.cross_entropy(out[t], batch[t]) for t in task_names}

    def metrics(model: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
        check_batch(batch, ("x", *task_names), name)
        out = model(batch["x"])
        return {t: _metrics.accuracy(out[t], batch[t]) for t in task_names}

    test_labels = {t: np.asarray(splits["test"][t]) for t in task_names}
    return Task(
        name=name,
        task_names=task_names,
        metric_names=("accuracy", "accuracy"),
        higher_is_better=(True, True),
        chance=tuple(_metrics.majority_frequency(test_labels[t]) for t in task_names),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        make_model=make_model,
        losses=losses,
        metrics=metrics,
        is_shared=is_trunk,
    )


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    digits = sklearn_datasets().load_digits()
    images = (np.asarray(digits.images, np.float64) / 16.0).astype(np.float32)
    return images, np.asarray(digits.target, np.int32)


def _draw_pairs(
    pool: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` ordered pairs of two different members of ``pool``."""
    first = rng.integers(0, len(pool), size=count)
    second = (first + rng.integers(1, len(pool), size=count)) % len(pool)
    return pool[first], pool[second]


def _compose(first: np.ndarray, second: np.ndarray, layout: str) -> np.ndarray:
    if layout == "side_by_side":
        return np.concatenate([first, second], axis=2)
    size = first.shape[1] + _OVERLAY_SHIFT
    canvas = np.zeros((first.shape[0], size, size), np.float32)
    upper = canvas.copy()
    upper[:, : first.shape[1], : first.shape[2]] = first
    canvas[:, _OVERLAY_SHIFT:, _OVERLAY_SHIFT:] = second
    return np.maximum(upper, canvas)
