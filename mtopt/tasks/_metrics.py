"""Per-task losses and metrics shared by the benchmark tasks (pure ``jax.numpy``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _check_logits(logits: Array, labels: Array, name: str) -> None:
    if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"{name}: logits must have shape labels.shape + (num_classes,); got logits "
            f"{logits.shape} and labels {labels.shape}."
        )


def _check_same_shape(pred: Array, target: Array, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: prediction and target shapes differ: {pred.shape} vs {target.shape}."
        )


def cross_entropy(logits: Array, labels: Array) -> Array:
    r"""Mean softmax cross-entropy :math:`-\frac1N\sum_n \log \mathrm{softmax}(z_n)_{y_n}`."""
    _check_logits(logits, labels, "cross_entropy")
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)
    return -jnp.mean(picked)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of examples whose arg-max logit is the label (ties: the lowest class)."""
    _check_logits(logits, labels, "accuracy")
    hits = jnp.argmax(logits, axis=-1).astype(jnp.int32) == labels.astype(jnp.int32)
    return jnp.mean(hits.astype(jnp.float32))


def mean_squared_error(pred: Array, target: Array) -> Array:
    r""":math:`\frac{1}{|\cdot|}\sum (\hat y - y)^2` over every example and output."""
    _check_same_shape(pred, target, "mean_squared_error")
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def root_mean_squared_error(pred: Array, target: Array) -> Array:
    r""":math:`\sqrt{\mathrm{MSE}}`, in the target's units."""
    return jnp.sqrt(mean_squared_error(pred, target))


def majority_frequency(labels: np.ndarray) -> float:
    """Frequency of the most common label: the accuracy of the best constant guess."""
    return float(np.max(np.bincount(np.asarray(labels))) / len(labels))
