"""What a training step does when a loss or a gradient is not finite."""

from __future__ import annotations

from typing import Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any
NanPolicy = Literal["propagate", "skip", "raise"]
NAN_POLICIES = ("propagate", "skip", "raise")


def check_policy(policy: str) -> None:
    """Validate the ``nan_policy`` option."""
    if policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}.")


def tree_all_finite(tree: PyTree) -> Array:
    """True when every floating entry of ``tree`` is finite (True for an empty tree)."""
    checks = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def rows_finite(jacobian: PyTree, num_tasks: int) -> Array:
    """(T,) mask: True where every entry of task i's gradient is finite."""
    ok = jnp.ones((num_tasks,), bool)
    for leaf in jax.tree.leaves(jacobian):
        ok = ok & jnp.all(jnp.isfinite(leaf), axis=tuple(range(1, leaf.ndim)))
    return ok


def gramian_rows_finite(gram: Array) -> Array:
    """(T,) mask from a Gramian: a non-finite task gradient makes its row non-finite."""
    return jnp.all(jnp.isfinite(gram), axis=1)


def task_finite(losses: Array, grads_ok: Array) -> Array:
    """(T,) mask of healthy tasks, blaming losses first.

    A non-finite value in one task's forward pass usually poisons every task's
    gradient (its backward pass multiplies a zero cotangent by NaN), so when
    some loss is not finite only those tasks are reported; the per-task
    gradients decide only when every loss is finite.
    """
    loss_ok = jnp.isfinite(losses)
    return loss_ok & jnp.where(jnp.all(loss_ok), grads_ok, True)


def raise_if_not_finite(
    finite: Array, nonfinite_tasks: Array, names: Optional[tuple[str, ...]]
) -> None:
    """Raise ``FloatingPointError`` naming the first task whose loss or gradient is not finite.

    A host callback (``jax.debug.callback``), so it works eagerly and under
    ``jit``, ``vmap`` and ``lax.scan`` for every method, with no wrapping. Under
    ``jit`` the error reaches the caller as a ``JaxRuntimeError`` whose message
    ends with this one. It costs a device-to-host round trip per step: a
    debugging mode.
    """
    num_tasks = nonfinite_tasks.shape[-1]
    labels = names if names is not None else tuple(f"task{i}" for i in range(num_tasks))

    def check(ok: Any, bad: Any) -> None:
        ok, bad = np.asarray(ok), np.asarray(bad).reshape(-1, num_tasks)
        if np.all(ok):
            return
        offenders = sorted({labels[i] for row in bad for i in np.flatnonzero(row)})
        if offenders:
            raise FloatingPointError(
                f"mtopt: non-finite loss or gradient in task(s) {', '.join(map(repr, offenders))} "
                f"(tasks: {', '.join(labels)}; nan_policy='raise')."
            )
        raise FloatingPointError(
            "mtopt: the combined gradient, the weights or the penalty is not finite while "
            "every task loss is (an invalid preference traced under jit gives NaN weights; "
            "loss-only methods form no per-task gradient: pass diagnostics=True to "
            "attribute it to a task; nan_policy='raise')."
        )

    jax.debug.callback(check, finite, nonfinite_tasks)


def apply_policy(
    policy: str, grads: PyTree, info: Any, new_state: Any, state: Any, task_ok: Array
) -> tuple[PyTree, Any, Any]:
    """Apply ``policy`` to one step's output; fill ``info.finite/skipped/nonfinite_tasks``.

    ``task_ok`` is the (T,) mask of tasks with a finite loss (and gradient);
    the step is finite when, in addition, the weights, the penalty and the
    combined gradient are.
    """
    finite = (
        jnp.all(task_ok)
        & jnp.all(jnp.isfinite(info.weights))
        & jnp.isfinite(info.penalty)
        & tree_all_finite(grads)
    )
    skipped = jnp.asarray(False)
    if policy == "skip":
        skipped = jnp.logical_not(finite)
        grads = select_tree(finite, grads, jax.tree.map(jnp.zeros_like, grads))
        new_state = select_tree(finite, new_state, state)
    elif policy == "raise":
        raise_if_not_finite(finite, jnp.logical_not(task_ok), info.names)
    info = info.replace(finite=finite, skipped=skipped, nonfinite_tasks=jnp.logical_not(task_ok))
    return grads, info, new_state


def select_tree(keep_new: Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``keep_new`` else ``old``, leaf by leaf (``keep_new`` may be batched)."""

    def pick(n: Any, o: Any) -> Any:
        n, o = jnp.asarray(n), jnp.asarray(o)
        cond = jnp.reshape(keep_new, keep_new.shape + (1,) * (n.ndim - keep_new.ndim))
        return jnp.where(cond, n, o).astype(n.dtype)

    return jax.tree.map(pick, new, old)


def keep_if_skipped(info: Any, new: PyTree, old: PyTree) -> PyTree:
    r"""Undo an update that the ``"skip"`` NaN policy skipped.

    With ``nan_policy="skip"``, :func:`mtopt.value_and_grad` returns zero
    gradients and the unchanged method state when a loss or gradient is not
    finite, and sets ``info.skipped``. An optimizer may still move the
    parameters on a zero gradient (Adam's momentum), so pass the updated and
    the previous parameters (and optimizer state) through this function:

    .. math:: \text{out} = \begin{cases} \text{old} & \text{info.skipped} \\
              \text{new} & \text{otherwise.} \end{cases}

    Works leaf by leaf on any pytree, also on a ``vmap``-batched ``info``
    (``info.skipped`` of shape (S,) and leaves with a leading S axis).

    Args:
      info: the :class:`mtopt.StepInfo` of the step.
      new: the pytree after the update (parameters, optimizer state, ...).
      old: the same pytree before the update.

    Returns:
      ``old`` where the step was skipped, else ``new``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> info = mtopt.StepInfo(losses=jnp.array([1.0, jnp.nan]), weights=jnp.ones(2),
      ...     total=jnp.array(jnp.nan), penalty=jnp.array(0.0), skipped=jnp.array(True))
      >>> mtopt.keep_if_skipped(info, {"w": jnp.array(2.0)}, {"w": jnp.array(1.0)})
      {'w': Array(1., dtype=float32)}
    """
    skipped = getattr(info, "skipped", None)
    if skipped is None:
        raise ValueError(
            "info.skipped is None: this StepInfo did not come from a step with a nan_policy."
        )
    return select_tree(jnp.logical_not(skipped), new, old)
