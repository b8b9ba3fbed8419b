"""Wine: cultivar classification and alcohol regression on one trunk (scikit-learn's bundled data)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mtopt.tasks import _metrics
from mtopt.tasks._task import (
    Task,
    TrunkHeads,
    check_batch,
    check_seed,
    is_trunk,
    mlp,
    sklearn_datasets,
    streams,
    to_arrays,
)

Array = jax.Array

_TASKS = ("alcohol", "cultivar")  # sorted: the task order of every mtopt step
_HOLDOUT_FRACTION = 0.2  # per class, for validation and again for test
_WIDTH = 32
_NUM_CLASSES = 3


def wine(seed: int = 0) -> Task:
    r"""Wine: a classifier (cross-entropy) and a regressor (MSE) on one shared trunk.

    The UCI Wine recognition data bundled with scikit-learn
    (``sklearn.datasets.load_wine``: 178 wines, 13 chemical measurements, 3
    cultivars; Forina et al., via Aeberhard, Coomans & de Vel 1992), so nothing is
    downloaded. Two tasks on the same inputs:

    - ``"cultivar"``: 3-class classification, softmax cross-entropy, metric accuracy
      (higher is better), ``chance`` the majority-class frequency on the test split;
    - ``"alcohol"``: regression of the alcohol content (% vol, column 0), which is
      removed from the inputs. The head predicts the *standardised* target
      :math:`(y - \mu)/s` (training mean and standard deviation) and the training
      loss is the MSE on that scale, so both losses start near 1; the metric is the
      RMSE in % vol (lower is better), ``chance`` the RMSE on the test split of
      predicting the training mean.

    Split, deterministic for a seed: stratified by cultivar, per class 20%
    (rounded) validation, 20% test and the rest training (106 / 36 / 36 wines),
    each split shuffled. The 12 remaining features are standardised with the
    training split's mean and standard deviation only. ``batch["alcohol"]`` holds
    the target in % vol (float32); ``batch["cultivar"]`` the class (int32).

    The model is an MLP trunk (two ``Linear -> ReLU`` layers of width 32, small
    because there are only 106 training wines) with a ``Linear(32, 3)``
    classification head and a ``Linear(32, 1)`` regression head: 1,604 parameters.

    Args:
      seed: seeds the split.

    Returns:
      The :class:`Task` ``"wine"``.

    Raises:
      ValueError: for a negative or non-integer seed.
      ImportError: if scikit-learn is not installed (``pip install "mtopt[examples]"``).

    Example:
      >>> import mtopt.tasks
      >>> task = mtopt.tasks.wine(seed=0)
      >>> {k: v.shape for k, v in task.train.items()}
      {'x': (106, 12), 'alcohol': (106,), 'cultivar': (106,)}
      >>> task.metric_names, task.higher_is_better
      (('rmse', 'accuracy'), (False, True))
    """
    name = "wine"
    seed = check_seed(seed, name)
    data = sklearn_datasets().load_wine()
    features = np.asarray(data.data, np.float64)
    if data.feature_names[0] != "alcohol":  # pragma: no cover - guards a data set change
        raise RuntimeError(f"wine: expected column 0 to be 'alcohol', got {data.feature_names[0]!r}.")
    inputs, alcohol = features[:, 1:], features[:, 0]
    cultivar = np.asarray(data.target, np.int32)

    split_rng, *shuffle_rngs = streams(seed, name, 4)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(_NUM_CLASSES):
        members = split_rng.permutation(np.flatnonzero(cultivar == c))
        n_hold = round(_HOLDOUT_FRACTION * len(members))
        parts["val"].append(members[:n_hold])
        parts["test"].append(members[n_hold:2 * n_hold])
        parts["train"].append(members[2 * n_hold:])
    index = {
        split: rng.permutation(np.concatenate(chunks))
        for (split, chunks), rng in zip(parts.items(), shuffle_rngs)
    }

    train_x = inputs[index["train"]]
    x_mean, x_std = train_x.mean(axis=0), train_x.std(axis=0)
    y_mean, y_std = float(alcohol[index["train"]].mean()), float(alcohol[index["train"]].std())
    splits = {
        split: to_arrays({
            "x": (inputs[i] - x_mean) / x_std,
            "alcohol": alcohol[i],
            "cultivar": cultivar[i],
        })
        for split, i in index.items()
    }
    mean32, std32 = jnp.float32(y_mean), jnp.float32(y_std)

    def make_model(rngs: nnx.Rngs) -> TrunkHeads:
        trunk = mlp([inputs.shape[1], _WIDTH, _WIDTH], rngs)
        cultivar_head = nnx.Linear(_WIDTH, _NUM_CLASSES, rngs=rngs)  # drawn first, as before
        heads = {"alcohol": nnx.Linear(_WIDTH, 1, rngs=rngs), "cultivar": cultivar_head}
        return TrunkHeads(trunk, heads)

    def losses(model: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
        check_batch(batch, ("x", *_TASKS), name)
        out = model(batch["x"])
        standardised = (batch["alcohol"] - mean32) / std32
        return {
            "alcohol": _metrics.mean_squared_error(out["alcohol"][..., 0], standardised),
            "cultivar": _metrics.cross_entropy(out["cultivar"], batch["cultivar"]),
        }

    def metrics(model: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
        check_batch(batch, ("x", *_TASKS), name)
        out = model(batch["x"])
        prediction = out["alcohol"][..., 0] * std32 + mean32
        return {
            "alcohol": _metrics.root_mean_squared_error(prediction, batch["alcohol"]),
            "cultivar": _metrics.accuracy(out["cultivar"], batch["cultivar"]),
        }

    test_alcohol = alcohol[index["test"]]
    chance = (
        float(np.sqrt(np.mean((test_alcohol - y_mean) ** 2))),
        _metrics.majority_frequency(cultivar[index["test"]]),
    )
    return Task(
        name=name,
        task_names=_TASKS,
        metric_names=("rmse", "accuracy"),
        higher_is_better=(False, True),
        chance=chance,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        make_model=make_model,
        losses=losses,
        metrics=metrics,
        is_shared=is_trunk,
    )
