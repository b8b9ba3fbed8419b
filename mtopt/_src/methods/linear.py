"""Linear scalarisation: fixed weights, equal weights, and log (scale-invariant) weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base, options

Array = jax.Array


WeightsSpec = Union[Sequence[float], Array, Mapping[str, float]]


def _fixed_weights(
    weights: WeightsSpec, method: str
) -> tuple[np.ndarray, Optional[tuple[str, ...]]]:
    """Fixed per-task weights as a float64 vector, and their task names.

    A dict ``{name: weight}`` gives the weights by task name, ordered by sorted
    name (the task order of a loss dict); a sequence or array gives them by
    position. The values must be concrete numbers: a traced array (inside
    ``jit``) cannot be checked or stored in the method.
    """
    names = None
    if isinstance(weights, Mapping):
        if not weights:
            raise ValueError(f"{method}: weights must name at least one task, got {{}}.")
        names = tuple(sorted(str(k) for k in weights))
        by_name = {str(k): v for k, v in weights.items()}
        weights = [by_name[n] for n in names]
    if isinstance(weights, jax.core.Tracer) or (
        isinstance(weights, (list, tuple)) and any(isinstance(v, jax.core.Tracer) for v in weights)
    ):
        raise TypeError(
            f"{method}: weights must be concrete numbers known when the method is built, got "
            "a traced value (inside jit/vmap/grad). For weights that change under jit, use "
            "mtopt.preference_linear() and pass them as preference= to the step."
        )
    try:
        values = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{method}: weights must be a sequence of numbers or a dict {{task name: number}}, "
            f"got {weights!r}."
        ) from None
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(
            f"{method}: weights must be a non-empty 1-D sequence (T,), got shape {values.shape}."
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{method}: weights must be finite, got {values.tolist()}.")
    if np.any(values < 0):
        raise ValueError(f"{method}: weights must be non-negative, got {values.tolist()}.")
    return values, names


def linear(weights: WeightsSpec) -> base.Weighting:
    r"""Fixed linear scalarisation, with Keras ``loss_weights`` semantics.

    .. math::
        L = \sum_i w_i L_i, \qquad \nabla L = \sum_i w_i \nabla L_i .

    The weights are used exactly as given: they are not normalised (they need
    not sum to 1), so ``linear([1.0, 0.2])`` reports and differentiates
    ``1.0 * L_1 + 0.2 * L_2``, as ``model.compile(loss_weights=[1.0, 0.2])``
    does in Keras. Loss-only: a training step costs one backward pass.

    Weights may be given by task name, ``linear({"seg": 1.0, "depth": 0.1})``:
    they are then put in the sorted task order of a loss dict and every step
    checks the names against the loss names. Positional weights follow the
    task order (sorted names for a loss dict); a step refuses them when its
    loss dict is built in non-sorted order (see :func:`mtopt.value_and_grad`).

    Args:
      weights: (T,) non-negative, finite task weights, or a dict ``{task name:
        weight}`` (checked eagerly; they must be concrete numbers, not traced).

    Returns:
      A :class:`mtopt.Weighting` with ``needs=Needs.LOSSES``.

    Raises:
      ValueError: on weights that are not a non-empty vector, negative or not
        finite; at trace time, when the step has a different number of tasks
        or other task names.
      TypeError: on weights that are not numbers, or traced.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.linear([1.0, 0.2])
      >>> w, _ = method.update(method.init(2), jnp.array([3.0, 5.0]))
      >>> w.tolist()
      [1.0, 0.20000000298023224]
      >>> by_name = mtopt.linear({"seg": 1.0, "depth": 0.1})  # tasks in sorted order
      >>> by_name.task_names, by_name.update(by_name.init(2), jnp.ones(2))[0].tolist()
      (('depth', 'seg'), [0.10000000149011612, 1.0])
    """
    fixed, names = _fixed_weights(weights, "linear")
    num = fixed.shape[0]

    def init(num_tasks: int, params=None) -> base.EmptyState:
        base.check_num_tasks(num_tasks)
        base.check_fixed_weight_count(num, num_tasks, "linear")
        return base.EmptyState(num_tasks)

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_fixed_weight_count(num, losses.shape[0], "linear")
        base.check_state(state, losses.shape[0], "linear", base.EmptyState)
        return jnp.asarray(fixed, base.compute_dtype(losses)), state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.LOSSES, name="linear",
        task_names=names, positional=names is None,
    )


def equal() -> base.Weighting:
    r"""Equal weighting: the plain sum of the task losses.

    .. math::
        L = \sum_i L_i, \qquad w_i = 1 .

    Convention pinned: the weights are **1**, so they sum to T, as in LibMTL's
    ``EW`` (whose docstring says 1/T but whose code sums) and in the "plain
    summed loss" baseline. For the mean, use ``linear([1 / T] * T)``.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.LOSSES``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.equal()
      >>> method.update(method.init(3), jnp.array([1.0, 2.0, 3.0]))[0].tolist()
      [1.0, 1.0, 1.0]
    """

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "equal", base.EmptyState)
        return jnp.ones(losses.shape, base.compute_dtype(losses)), state

    return base.Weighting(
        init=base.init_empty_state, update=update, needs=base.Needs.LOSSES, name="equal"
    )


def log_scalarization(
    weights: Optional[Union[Sequence[float], Array]] = None, *, eps: float = 1e-12
) -> base.Weighting:
    r"""Scale-invariant (logarithmic) scalarisation.

    .. math::
        L = \sum_i c_i \log L_i, \qquad
        \nabla L = \sum_i \frac{c_i}{L_i} \nabla L_i ,

    so the weights on the raw losses are :math:`w_i = c_i / L_i` (treated as
    constants in the backward pass). Multiplying a task loss by any positive
    constant leaves the combined gradient unchanged. Reference: the
    ``ScaleInvariantLinearScalarization`` baseline of Navon et al., "Multi-Task
    Learning as a Bargaining Game" (ICML 2022); the log losses of DB-MTL
    (Lin et al. 2023).

    Conventions pinned: ``info.total`` is :math:`\sum_i w_i L_i = \sum_i c_i`
    (the linearisation), not :math:`\sum_i c_i \log L_i`. Task losses must be
    positive; a loss below ``eps`` is treated as ``eps`` (a zero loss gets a
    large finite weight instead of an infinite one).

    Args:
      weights: (T,) non-negative coefficients :math:`c`, or a dict by task name
        (as :func:`mtopt.linear`); ``None`` means all 1.
      eps: floor applied to the losses before dividing.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.LOSSES``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.log_scalarization()
      >>> method.update(method.init(2), jnp.array([2.0, 0.5]))[0].tolist()
      [0.5, 2.0]
    """
    coeffs, names = (None, None) if weights is None else _fixed_weights(weights, "log")
    eps = options.real(eps, "eps", "log", positive=True)

    def init(num_tasks: int, params=None) -> base.EmptyState:
        base.check_num_tasks(num_tasks)
        if coeffs is not None:
            base.check_fixed_weight_count(coeffs.shape[0], num_tasks, "log")
        return base.EmptyState(num_tasks)

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "log", base.EmptyState)
        dtype = base.compute_dtype(losses)
        if coeffs is None:
            c = jnp.ones(losses.shape, dtype)
        else:
            base.check_fixed_weight_count(coeffs.shape[0], losses.shape[0], "log")
            c = jnp.asarray(coeffs, dtype)
        return c / jnp.maximum(losses.astype(dtype), eps), state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.LOSSES, name="log",
        task_names=names, positional=coeffs is not None and names is None,
    )
