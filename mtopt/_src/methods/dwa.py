"""Dynamic Weight Averaging (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base

Array = jax.Array


class DWAEpochState(NamedTuple):
    """State of epoch-level DWA.

    Attributes:
      loss_sum: (T,) sum of the unweighted task losses seen in the current epoch.
      steps: () int32, steps seen in the current epoch.
      previous: (T,) mean task losses of the last finished epoch (e-1).
      before_previous: (T,) mean task losses of the epoch before that (e-2).
      epochs: () int32, number of finished epochs.

    Example:
      >>> import mtopt
      >>> state = mtopt.dwa().init(2)
      >>> type(state).__name__, int(state.epochs)
      ('DWAEpochState', 0)
    """

    loss_sum: Array
    steps: Array
    previous: Array
    before_previous: Array
    epochs: Array


class DWAWindowState(NamedTuple):
    """State of iteration-window DWA.

    Attributes:
      costs: (2 * window, T) FIFO buffer of the last task losses (newest last),
        initialised to ones as in the reference implementation.
      weights: (T,) current weights (ones until the buffer has filled).
      iterations: () int32, steps seen so far.

    Example:
      >>> import mtopt
      >>> state = mtopt.dwa(mode="window", window=5).init(2)
      >>> type(state).__name__, state.costs.shape
      ('DWAWindowState', (10, 2))
    """

    costs: Array
    weights: Array
    iterations: Array


def _dwa_weights(ratio: Array, temperature: float) -> Array:
    num_tasks = ratio.shape[0]
    return num_tasks * jax.nn.softmax(ratio / temperature)


def _safe_ratio(num: Array, den: Array) -> Array:
    tiny = jnp.finfo(den.dtype).tiny
    return num / jnp.where(jnp.abs(den) > tiny, den, tiny)


def dwa_end_epoch(state: DWAEpochState) -> DWAEpochState:
    """Close the current epoch of an epoch-level DWA state by hand.

    Use it with ``dwa(steps_per_epoch=None)`` when epochs have no fixed length:
    the mean of the losses seen since the last call becomes the newest epoch
    loss. An epoch with no steps leaves the state unchanged.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.dwa()
      >>> state = method.init(2)
      >>> _, state = method.update(state, jnp.array([2.0, 4.0]))
      >>> state = mtopt.dwa_end_epoch(state)
      >>> state.previous.tolist(), int(state.epochs)
      ([2.0, 4.0], 1)
    """
    has_steps = state.steps > 0
    mean = state.loss_sum / jnp.maximum(state.steps, 1).astype(state.loss_sum.dtype)
    return DWAEpochState(
        loss_sum=jnp.where(has_steps, jnp.zeros_like(state.loss_sum), state.loss_sum),
        steps=jnp.where(has_steps, 0, state.steps),
        previous=jnp.where(has_steps, mean, state.previous),
        before_previous=jnp.where(has_steps, state.previous, state.before_previous),
        epochs=state.epochs + has_steps.astype(state.epochs.dtype),
    )


def dwa(
    temperature: float = 2.0,
    *,
    mode: Literal["epoch", "window"] = "epoch",
    steps_per_epoch: Optional[int] = None,
    window: int = 25,
) -> base.Weighting:
    r"""Dynamic Weight Averaging: weight each task by how slowly its loss falls.

    .. math::
        r_i = \frac{\bar L_i(e-1)}{\bar L_i(e-2)}, \qquad
        w_i = T \,\mathrm{softmax}(r / \tau)_i ,

    so the weights sum to **T** (equal weights are all 1). Reference: Liu, Johns
    & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.

    Two variants, because the references disagree:

    - ``mode="epoch"`` (LibMTL, the paper): :math:`\bar L_i(e)` is the mean
      *unweighted* training loss of epoch ``e``; the weights are 1 during the
      first two epochs. With ``steps_per_epoch=k`` an epoch closes by itself
      every k steps; with ``None`` call :func:`mtopt.dwa_end_epoch` at the end of
      each epoch.
    - ``mode="window"`` (Nash-MTL's ``DynamicWeightAverage``): a FIFO buffer of
      the last ``2 * window`` step losses (initialised to ones); after more than
      ``window`` steps, :math:`r` is the mean of the newer half over the mean of
      the older half, and the weights stay fixed until then. Nash-MTL's code
      then takes the *mean* of :math:`w_i L_i` (an extra 1/T); here the weights
      still sum to T, as in the epoch variant.

    Loss-only: a training step costs one backward pass. The current step's
    losses enter the statistics after the weights are computed (epoch mode) or
    before (window mode, as in the reference).

    Args:
      temperature: softmax temperature :math:`\tau` (2.0 in both references).
      mode: ``"epoch"`` or ``"window"``.
      steps_per_epoch: epoch length for ``mode="epoch"``; ``None`` for manual
        epochs.
      window: half the buffer length for ``mode="window"`` (25 in Nash-MTL).

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.LOSSES``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.dwa(steps_per_epoch=1)
      >>> state = method.init(2)
      >>> for losses in ([1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
      ...     w, state = method.update(state, jnp.array(losses))
      >>> [round(float(x), 4) for x in w]   # task 0 fell faster: lower weight
      [0.8756, 1.1244]
    """
    if not temperature > 0:
        raise ValueError(f"dwa: temperature must be positive, got {temperature}.")
    if mode not in ("epoch", "window"):
        raise ValueError(f"dwa: mode must be 'epoch' or 'window', got {mode!r}.")
    if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
        raise ValueError(f"dwa: steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}.")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"dwa: window must be a positive int, got {window!r}.")

    if mode == "window":

        def init_window(num_tasks: int, params=None) -> DWAWindowState:
            base.check_num_tasks(num_tasks)
            return DWAWindowState(
                costs=jnp.ones((2 * window, num_tasks), jnp.float32),
                weights=jnp.ones((num_tasks,), jnp.float32),
                iterations=jnp.zeros((), jnp.int32),
            )

        def update_window(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
            del gramian, jacobian, key, preference
            losses = base.check_losses(losses)
            base.check_state_tasks(state.weights.shape[0], losses.shape[0], "dwa")
            costs = jnp.concatenate(
                [state.costs[1:], losses.astype(state.costs.dtype)[None]], axis=0
            )
            ratio = _safe_ratio(costs[window:].mean(0), costs[:window].mean(0))
            weights = jnp.where(
                state.iterations > window, _dwa_weights(ratio, temperature), state.weights
            )
            new_state = DWAWindowState(costs, weights, state.iterations + 1)
            return weights, new_state

        return base.Weighting(
            init=init_window, update=update_window, needs=base.Needs.LOSSES, name="dwa"
        )

    def init(num_tasks: int, params=None) -> DWAEpochState:
        base.check_num_tasks(num_tasks)
        zeros = jnp.zeros((num_tasks,), jnp.float32)
        return DWAEpochState(
            loss_sum=zeros,
            steps=jnp.zeros((), jnp.int32),
            previous=jnp.ones((num_tasks,), jnp.float32),
            before_previous=jnp.ones((num_tasks,), jnp.float32),
            epochs=jnp.zeros((), jnp.int32),
        )

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state_tasks(state.loss_sum.shape[0], losses.shape[0], "dwa")
        ratio = _safe_ratio(state.previous, state.before_previous)
        weights = jnp.where(
            state.epochs >= 2,
            _dwa_weights(ratio, temperature),
            jnp.ones_like(state.previous),
        )
        new_state = state._replace(
            loss_sum=state.loss_sum + losses.astype(state.loss_sum.dtype),
            steps=state.steps + 1,
        )
        if steps_per_epoch is not None:
            closed = dwa_end_epoch(new_state)
            done = new_state.steps >= steps_per_epoch
            new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), closed, new_state)
        return weights, new_state

    return base.Weighting(init=init, update=update, needs=base.Needs.LOSSES, name="dwa")
