"""Dynamic Weight Averaging (Liu, Johns & Davison, CVPR 2019)."""

from __future__ import annotations

from typing import Literal, NamedTuple, Union

import jax
import jax.numpy as jnp

from mtopt._src import base, options

Array = jax.Array


class DWAEpochState(NamedTuple):
    """State of epoch-level DWA.

    Attributes:
      loss_mean: (T,) mean of the unweighted task losses seen in the current epoch
        (a running mean, so it cannot overflow for finite losses).
      steps: () int32, steps seen in the current epoch.
      previous: (T,) mean task losses of the last finished epoch (e-1).
      before_previous: (T,) mean task losses of the epoch before that (e-2).
      epochs: () int32, number of finished epochs.

    Example:
      >>> import mtopt
      >>> state = mtopt.dwa(steps_per_epoch=100).init(2)
      >>> type(state).__name__, int(state.epochs)
      ('DWAEpochState', 0)
    """

    loss_mean: Array
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


def _loss_ratio(numerator: Array, denominator: Array) -> Array:
    r"""DWA's loss ratio :math:`r = \bar L(e-1) / \bar L(e-2)`, defined for zero losses.

    .. math::
        r_i = \begin{cases}
          n_i / d_i & d_i \ne 0, \\
          1 & n_i = d_i = 0 \ \text{(a task at zero loss that stays there)}, \\
          +\infty & n_i > 0 = d_i \ \text{(the exact quotient)}.
        \end{cases}

    ``0/0 = 1`` is the ratio of an unchanged loss; ``x/0 = +inf`` is the exact
    quotient, which :func:`_dwa_weights` handles as the limit of the softmax. Only
    ``0/0`` is redefined (detected as a NaN quotient of finite inputs, so flushed
    subnormals count as 0); a NaN or infinite loss still gives NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.methods.dwa import _loss_ratio
      >>> _loss_ratio(jnp.array([1.0, 0.0, 5.0]), jnp.array([2.0, 0.0, 0.0])).tolist()
      [0.5, 1.0, inf]
    """
    ratio = numerator / denominator
    zero_over_zero = jnp.isnan(ratio) & jnp.isfinite(numerator) & jnp.isfinite(denominator)
    return jnp.where(zero_over_zero, jnp.ones_like(ratio), ratio)


def _dwa_weights(ratio: Array, temperature: float) -> Array:
    r"""``T softmax(r / temperature)``, finite for every non-NaN ratio, infinities included.

    The softmax is evaluated with its argument clipped to
    :math:`[-c, c]`, :math:`c = \mathrm{finfo.max} / 2`, the largest range on
    which the max-shifted softmax cannot overflow. This is the exact value
    wherever ``r / temperature`` is finite and inside the range, and otherwise
    its limit: the tasks whose ratio is infinite (or beyond :math:`c \tau`)
    share the total weight T equally and the others get 0, exactly what the
    softmax tends to as their denominators tend to 0. NaN stays NaN (the step's
    ``nan_policy`` then applies).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.methods.dwa import _dwa_weights
      >>> _dwa_weights(jnp.array([1.0, jnp.inf]), 2.0).tolist()
      [0.0, 2.0]
    """
    num_tasks = ratio.shape[0]
    cap = jnp.finfo(ratio.dtype).max / 2
    scaled = jnp.clip(ratio / temperature, -cap, cap)
    return num_tasks * jax.nn.softmax(scaled)


def dwa_end_epoch(state: DWAEpochState) -> DWAEpochState:
    """Close the current epoch of an epoch-level DWA state by hand.

    It is ``dwa(steps_per_epoch="manual").end_epoch``, for epochs without a
    fixed length: the mean of the losses seen since the last call becomes the
    newest epoch loss. An epoch with no steps leaves the state unchanged.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.dwa(steps_per_epoch="manual")
      >>> state = method.init(2)
      >>> _, state = method.update(state, jnp.array([2.0, 4.0]))
      >>> state = method.end_epoch(state)
      >>> state.previous.tolist(), int(state.epochs)
      ([2.0, 4.0], 1)
    """
    has_steps = state.steps > 0
    mean = state.loss_mean
    return DWAEpochState(
        loss_mean=jnp.where(has_steps, jnp.zeros_like(mean), mean),
        steps=jnp.where(has_steps, 0, state.steps),
        previous=jnp.where(has_steps, mean, state.previous),
        before_previous=jnp.where(has_steps, state.previous, state.before_previous),
        epochs=state.epochs + has_steps.astype(state.epochs.dtype),
    )


def dwa(
    temperature: float = 2.0,
    *,
    mode: Literal["epoch", "window"] = "epoch",
    steps_per_epoch: Union[int, Literal["manual"], None] = None,
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
      first two epochs. ``steps_per_epoch`` is required in this mode: with
      ``k`` an epoch closes by itself every k steps; with ``"manual"`` the
      driver closes each epoch by calling ``method.end_epoch(state)``
      (declared as :attr:`mtopt.Weighting.end_epoch`, so the
      runner makes the call and drivers without epochs refuse the method).
      Without it every weight would stay 1 (equal weighting) in any loop that
      never closes an epoch, so it is an error; the runner fills in its own
      epoch length.
    - ``mode="window"`` (Nash-MTL's ``DynamicWeightAverage``): a FIFO buffer of
      the last ``2 * window`` step losses (initialised to ones); after more than
      ``window`` steps, :math:`r` is the mean of the newer half over the mean of
      the older half, and the weights stay fixed until then. Nash-MTL's code
      then takes the *mean* of :math:`w_i L_i` (an extra 1/T); here the weights
      still sum to T, as in the epoch variant.

    Loss-only: a training step costs one backward pass. The current step's
    losses enter the statistics after the weights are computed (epoch mode) or
    before (window mode, as in the reference).

    Zero losses (convention pinned): a zero denominator :math:`\bar L_i(e-2) = 0`
    does not make the weights NaN. The ratio is ``0/0 = 1`` (a loss that stays
    at 0 is unchanged) and ``x/0 = +inf`` for ``x > 0``, and the softmax is
    evaluated as its limit (argument clipped to ``±finfo.max / 2``): the tasks
    with an infinite ratio share the total weight T and the others get 0, which
    is what the weights tend to as that denominator tends to 0. So any finite,
    non-negative losses give finite weights summing to T, in both modes and in
    float32 and float64. LibMTL divides its epoch means in NumPy without a
    guard (``x/0 = inf``, ``0/0 = nan``) and takes ``F.softmax`` of the result,
    so its weights are NaN in both cases; Nash-MTL's window variant divides in
    torch, also unguarded.

    Dtypes: the state is created in JAX's default float dtype
    (float64 under x64) and keeps its dtypes through ``update`` (a
    ``lax.scan`` carry never changes type); the weights are float64 for
    float64 losses, else float32.

    Args:
      temperature: softmax temperature :math:`\tau` (2.0 in both references).
      mode: ``"epoch"`` or ``"window"``.
      steps_per_epoch: for ``mode="epoch"`` (required): the epoch length, a
        positive int, or ``"manual"`` (the driver calls ``end_epoch``).
        Ignored in window mode.
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

      A loss that rises from 0 takes all the weight (the limit), never NaN:

      >>> state = method.init(2)
      >>> for losses in ([1.0, 0.0], [1.0, 5.0], [1.0, 1.0]):
      ...     w, state = method.update(state, jnp.array(losses))
      >>> w.tolist()
      [0.0, 2.0]
    """
    temperature = options.real(temperature, "temperature", "dwa", positive=True)
    mode = options.choice(mode, "mode", "dwa", ("epoch", "window"))
    manual = isinstance(steps_per_epoch, str) and steps_per_epoch == "manual"
    if isinstance(steps_per_epoch, str) and not manual:
        raise ValueError(
            f"dwa: steps_per_epoch must be a positive int or 'manual', got {steps_per_epoch!r}."
        )
    if not manual:
        steps_per_epoch = options.optional_integer(steps_per_epoch, "steps_per_epoch", "dwa")
    window = options.integer(window, "window", "dwa")
    if mode == "epoch" and steps_per_epoch is None:
        raise ValueError(
            "dwa: mode='epoch' needs steps_per_epoch: an int k (an epoch closes by itself "
            "every k steps) or 'manual' (the loop calls method.end_epoch(state) at the end of "
            "each epoch). Without epochs the weights would stay 1 (equal weighting). "
            "mode='window' needs neither."
        )

    if mode == "window":

        def init_window(num_tasks: int, params=None) -> DWAWindowState:
            del params
            base.check_num_tasks(num_tasks)
            dtype = base.state_dtype()
            return DWAWindowState(
                costs=jnp.ones((2 * window, num_tasks), dtype),
                weights=jnp.ones((num_tasks,), dtype),
                iterations=jnp.zeros((), jnp.int32),
            )

        def update_window(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
            del gramian, jacobian, key, preference
            losses = base.check_losses(losses)
            base.check_state(state, losses.shape[0], "dwa", DWAWindowState)
            base.check_state_tasks(state.weights.shape[0], losses.shape[0], "dwa")
            out_dtype = base.compute_dtype(losses)
            costs = jnp.concatenate(
                [state.costs[1:], losses.astype(state.costs.dtype)[None]], axis=0
            )
            # Ratio of the two halves' means (same length: of their sums), both scaled
            # by the largest entry so that no sum can overflow.
            scale = jnp.max(costs, axis=0, keepdims=True)
            scale = jnp.where(scale > 0, scale, jnp.ones_like(scale))
            ratio = _loss_ratio(
                jnp.sum(costs[window:] / scale, axis=0), jnp.sum(costs[:window] / scale, axis=0)
            )
            weights = jnp.where(
                state.iterations > window, _dwa_weights(ratio, temperature), state.weights
            )
            new_state = DWAWindowState(
                costs, weights.astype(state.weights.dtype), state.iterations + 1
            )
            return weights.astype(out_dtype), new_state

        return base.Weighting(
            init=init_window, update=update_window, needs=base.Needs.LOSSES, name="dwa",
            stateful=True,
        )

    def init(num_tasks: int, params=None) -> DWAEpochState:
        del params
        base.check_num_tasks(num_tasks)
        dtype = base.state_dtype()
        return DWAEpochState(
            loss_mean=jnp.zeros((num_tasks,), dtype),
            steps=jnp.zeros((), jnp.int32),
            previous=jnp.ones((num_tasks,), dtype),
            before_previous=jnp.ones((num_tasks,), dtype),
            epochs=jnp.zeros((), jnp.int32),
        )

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "dwa", DWAEpochState)
        base.check_state_tasks(state.loss_mean.shape[0], losses.shape[0], "dwa")
        ratio = _loss_ratio(state.previous, state.before_previous)
        weights = jnp.where(
            state.epochs >= 2,
            _dwa_weights(ratio, temperature),
            jnp.ones_like(state.previous),
        )
        count = state.steps + 1
        mean = state.loss_mean
        new_state = state._replace(
            loss_mean=mean + (losses.astype(mean.dtype) - mean) / count.astype(mean.dtype),
            steps=count,
        )
        if not manual:
            closed = dwa_end_epoch(new_state)
            done = new_state.steps >= steps_per_epoch
            new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), closed, new_state)
        return weights.astype(base.compute_dtype(losses)), new_state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.LOSSES, name="dwa",
        end_epoch=dwa_end_epoch if manual else None, stateful=True,
    )
