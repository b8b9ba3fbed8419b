"""Send a step's diagnostics to any metric writer, also from inside ``jit``."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _host_scalars(values: dict[str, Any]) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in values.items()}


def log_scalars(
    info: Any,
    writer: Callable[[int, dict[str, float]], None],
    step: Any,
    *,
    every: int = 1,
    prefix: str = "",
) -> None:
    r"""Hand ``info.scalars()`` to ``writer(step, {name: float})`` every ``every`` steps.

    The hook for a researcher's own training loop: ``writer`` can be anything
    that takes a step number and a flat dict of Python floats (a TensorBoard or
    Weights & Biases logger, a CSV writer, a list's ``append``). The keys are
    those of :meth:`mtopt.StepInfo.scalars`: ``total``, ``penalty``,
    ``loss/<task>``, ``weight/<task>`` and, when the Gramian was computed,
    ``grad_norm/<task>``, ``cosine/<a>/<b>``, ``num_conflicts``; ``skipped``
    under a NaN policy.

    It works eagerly and inside ``jax.jit`` / ``lax.scan`` (through
    ``jax.debug.callback``; the write happens when the step runs, the values
    are not traced into the writer). The condition ``step % every == 0`` is
    evaluated on the device, so the call costs nothing on other steps. A
    ``vmap``-batched ``info`` (several seeds in one program) is split into one
    writer call per member with the prefix ``"<prefix>seed<k>/"``.

    Args:
      info: the :class:`mtopt.StepInfo` of one step (or a batch of them).
      writer: ``writer(step: int, scalars: dict[str, float]) -> None``.
      step: the step number (Python int or integer array).
      every: write only when ``step % every == 0``.
      prefix: prepended to every key.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import mtopt
      >>> logged = []
      >>> info = mtopt.StepInfo(losses=jnp.array([1.0, 2.0]),
      ...     weights=jnp.array([1.0, 0.5]), total=jnp.array(2.0), penalty=jnp.array(0.0))
      >>> jax.jit(lambda i, s: mtopt.log_scalars(i, lambda k, d: logged.append((k, d)), s))(info, 0)
      >>> jax.effects_barrier()
      >>> logged[0][0], logged[0][1]["weight/task1"]
      (0, 0.5)
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}.")
    batch_shape = jnp.shape(info.total)
    if len(batch_shape) > 1:
        raise ValueError(
            f"log_scalars takes one StepInfo or a batch along one axis; info.total has "
            f"shape {batch_shape}."
        )
    if batch_shape:
        values = {
            f"seed{k}/{name}": value
            for k in range(batch_shape[0])
            for name, value in jax.tree.map(lambda x, k=k: x[k], info).scalars().items()
        }
        values = {f"{prefix}{name}": value for name, value in values.items()}
    else:
        values = info.scalars(prefix)

    def write(step_value: Any, payload: dict[str, Any]) -> None:
        writer(int(np.asarray(step_value)), _host_scalars(payload))

    step_array = jnp.asarray(step)
    if every == 1:
        jax.debug.callback(write, step_array, values, ordered=True)
        return
    jax.lax.cond(
        step_array % every == 0,
        lambda: jax.debug.callback(write, step_array, values, ordered=True),
        lambda: None,
    )
