r"""FAMO: Fast Adaptive Multitask Optimization, with its two-phase update made explicit."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from mtopt._src import base, options

__all__ = ["FAMOState", "famo", "famo_update_logits"]

# The reference adds 1e-8 to every loss gap before taking its logarithm.
_GAP_EPS = 1e-8
# torch.optim.Adam defaults, used by every reference implementation.
_ADAM_B1 = 0.9
_ADAM_B2 = 0.999
_ADAM_EPS = 1e-8


class FAMOState(NamedTuple):
    """The state of :func:`famo`: task logits, their Adam state, the previous losses.

    Attributes:
      logits: (T,) the task logits :math:`\\xi`; the task distribution is
        ``softmax(logits)``.
      logits_opt_state: the optax state of the logits' optimiser (Adam with L2
        weight decay, as ``torch.optim.Adam(weight_decay=gamma)``).
      prev_losses: (T,) the losses recorded by the last ``update``.
      has_prev_losses: () bool, whether ``prev_losses`` holds a recorded value.
      min_losses: (T,) the lower bounds :math:`l^*` of the losses (default 0).
      w_lr: () the learning rate of the logits.
      gamma: () the weight decay of the logits.

    Example:
      >>> import mtopt
      >>> state = mtopt.famo().init(3)
      >>> state.logits.tolist(), bool(state.has_prev_losses)
      ([0.0, 0.0, 0.0], False)
    """

    logits: jax.Array
    logits_opt_state: optax.OptState
    prev_losses: jax.Array
    has_prev_losses: jax.Array
    min_losses: jax.Array
    w_lr: jax.Array
    gamma: jax.Array


def _logits_optimizer(w_lr: jax.Array, gamma: jax.Array) -> optax.GradientTransformation:
    """Adam with L2 weight decay *added to the gradient*, exactly as torch's
    ``Adam(weight_decay=gamma)`` (not AdamW's decoupled decay)."""
    return optax.chain(
        optax.add_decayed_weights(gamma),
        optax.scale_by_adam(b1=_ADAM_B1, b2=_ADAM_B2, eps=_ADAM_EPS),
        optax.scale_by_learning_rate(w_lr),
    )


def _log_gaps(losses: jax.Array, min_losses: jax.Array) -> jax.Array:
    """``log(max(L - l*, 0) + 1e-8)``: the reference's log-gap, guarded below at 0."""
    return jnp.log(jnp.maximum(losses - min_losses, 0.0) + _GAP_EPS)


def _logits_step(state: FAMOState, new_losses: jax.Array, dtype: jnp.dtype) -> FAMOState:
    """One Adam step on the logits, applied only when ``prev_losses`` is recorded."""
    logits = state.logits.astype(dtype)
    min_losses = state.min_losses.astype(dtype)
    # delta_i: the decrease of log(L_i - l*_i) over the parameter step.
    delta = _log_gaps(state.prev_losses.astype(dtype), min_losses) - _log_gaps(
        new_losses, min_losses
    )
    z = jax.nn.softmax(logits)
    # Vector-Jacobian product of softmax with delta: d_i = z_i (delta_i - <z, delta>).
    grad = z * (delta - jnp.sum(z * delta))
    tx = _logits_optimizer(state.w_lr.astype(dtype), state.gamma.astype(dtype))
    opt_state = jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        state.logits_opt_state,
    )
    stepped = base.optax_step(tx, grad, opt_state, logits)
    kept = (logits, state.logits_opt_state)
    new_logits, new_opt_state = jax.tree.map(
        lambda new, old: jnp.where(state.has_prev_losses, new.astype(old.dtype), old),
        stepped,
        kept,
    )
    return state._replace(
        logits=new_logits.astype(state.logits.dtype), logits_opt_state=new_opt_state
    )


def famo_update_logits(state: FAMOState, new_losses: base.Array) -> FAMOState:
    r"""FAMO's second phase: update the task logits from the losses after the step.

    This is ``famo(lagged=False).after_step`` (:attr:`mtopt.Weighting.after_step`):
    call it as ``method.after_step(state, new_losses)`` after the parameter
    step, with the losses re-evaluated **on the same batch** at the new
    parameters (no gradient needed). With
    :math:`l^{\mathrm{prev}}` the losses recorded by the last ``update`` and
    :math:`l^{\mathrm{new}}` these losses,

    .. math::

        \delta_i = \log(l_i^{\mathrm{prev}} - l^*_i + 10^{-8})
                 - \log(l_i^{\mathrm{new}} - l^*_i + 10^{-8}), \qquad
        \nabla_\xi = J_{\mathrm{softmax}}(\xi)^\top \delta ,

    followed by one step of Adam with L2 weight decay on :math:`\xi`. If no
    losses were recorded yet (``state.has_prev_losses`` is False) the state is
    returned unchanged. It is ``famo(lagged=False).after_step``; not needed with
    ``famo()`` (``lagged=True``, the default), which performs this step inside
    ``update``.

    Args:
      state: the state returned by the last ``update`` of :func:`famo`.
      new_losses: (T,) the task losses after the parameter step, same batch.

    Returns:
      The state with updated ``logits`` and ``logits_opt_state``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import famo
      >>> method = famo(lagged=False)
      >>> state = method.init(2)
      >>> weights, state = method.update(state, jnp.array([1.0, 1.0]))
      >>> # ... parameter step; task 0 improved, task 1 did not ...
      >>> state = method.after_step(state, jnp.array([0.5, 1.0]))
      >>> bool(state.logits[1] > state.logits[0])  # the lagging task gains weight
      True
    """
    new_losses = base.check_losses(new_losses, "new_losses")
    base.check_state(state, new_losses.shape[0], "famo_update_logits", FAMOState)
    base.check_state_tasks(state.logits.shape[-1], new_losses.shape[0], "famo_update_logits")
    dtype = base.compute_dtype(new_losses, state.logits)
    new_losses = jax.lax.stop_gradient(new_losses.astype(dtype))
    return _logits_step(state, new_losses, dtype)


def famo(
    w_lr: float = 0.025,
    gamma: float = 1e-3,
    min_losses: Optional[Union[float, Sequence[float], base.Array]] = None,
    *,
    lagged: bool = True,
) -> base.Weighting:
    r"""FAMO: balances the rate at which each task's loss decreases, in O(1) per step.

    FAMO keeps task logits :math:`\xi` (a distribution :math:`z = \mathrm{softmax}(\xi)`)
    and only the loss values; it never forms per-task gradients, so a step costs
    one backward pass and O(T) memory. With :math:`D_i = L_i - l^*_i + 10^{-8}`
    the model minimises :math:`\sum_i z_i \log D_i / c`,
    :math:`c = \sum_j z_j / D_j` (held constant), whose gradient is a weighted sum
    of the raw task gradients:

    .. math::

        w_i = \frac{z_i / D_i}{\sum_j z_j / D_j}
            = \mathrm{softmax}(\xi - \log D)_i .

    The weights sum to **1** (a convex combination). They are applied to the raw
    losses, so the reported total :math:`\sum_i w_i L_i` is not the reference's
    printed loss :math:`\sum_i z_i \log D_i / c`, but its gradient is the same.

    **The logit step.** The logits are learned from how much each loss dropped
    over a parameter step: one Adam step on :math:`\xi` along
    :math:`J_{\mathrm{softmax}}^\top \delta`,
    :math:`\delta_i = \log D_i^{\mathrm{prev}} - \log D_i^{\mathrm{new}}`.
    Two forms:

    - ``lagged=True`` (default; the official toy trainer's single-forward
      variant): ``update`` first takes the logit step using the current losses
      as the "new" losses of the previous step (when a previous step was
      recorded), then returns the weights from the updated logits. Every loop
      that threads the state runs it correctly. Exact when the losses are
      deterministic; with mini-batches it compares losses of different batches.
    - ``lagged=False`` (the reference ``famo.py`` and LibMTL's trainer; one
      extra forward pass per step): ``update`` returns the weights and records
      ``losses``; after the parameter step the driver calls
      ``state = method.after_step(state, new_losses)`` (that is
      :func:`famo_update_logits`) with the losses re-evaluated **on the same
      batch**. The method declares it (``Weighting.after_step``): the runner
      and :func:`mtopt.pareto.sweep` make the call, :func:`mtopt.as_aggregator`
      and :func:`mtopt.pareto.train_psl` refuse this form when built (they
      cannot re-evaluate the losses), and a hand-written loop must call it
      (without it the logits never move and FAMO is log scalarisation).

    The logits' optimiser is Adam (b1 = 0.9, b2 = 0.999, eps = 1e-8) with
    learning rate ``w_lr`` and **L2 weight decay** ``gamma`` added to the
    gradient, exactly as ``torch.optim.Adam(weight_decay=gamma)`` (decoupled AdamW
    decay would give different logits). The decay pulls the logits towards 0,
    i.e. the task distribution towards uniform.

    Defaults: ``w_lr = 0.025`` everywhere. ``gamma`` differs between the
    references: 1e-3 in LibMTL and in the paper's Algorithm 2 (our default),
    0.01 in the stand-alone ``famo.py``, 1e-5 in the official
    ``weight_methods.FAMO``; the paper's scripts use 1e-3 (NYUv2, QM9, CelebA),
    1e-2 (Cityscapes) and 0 (toy). The reference also clips the shared gradient
    to norm 1 (``max_norm``): that belongs to the optimiser chain
    (``optax.clip_by_global_norm(1.0)``), not to this weighting.

    Numerical guards: :math:`D_i` uses :math:`\max(L_i - l^*_i, 0)`, so a loss
    below its bound gives :math:`D_i = 10^{-8}` (a very large but finite weight)
    where the reference would produce NaN. The 1e-8 is absolute, as in the
    reference: losses (above :math:`l^*`) smaller than about 1e-6 are
    indistinguishable from their bound. Weights are computed as a softmax in log
    space, so they stay finite for any loss scale.

    Dtypes: the state is created in JAX's default float dtype
    (float64 under x64) and keeps its dtypes through ``update`` and
    :func:`famo_update_logits`; the weights are float64 for float64 losses,
    else float32 (computed in float64 when the state is).

    Hyperparameters (``w_lr``, ``gamma``, ``min_losses``) live in the state, so
    :func:`famo_update_logits` needs nothing else and a ``vmap`` over states can
    sweep them; replace them with ``state._replace(...)`` (e.g. to set
    ``min_losses`` later, as the toy trainer's ``set_min_losses``).

    References:
      Liu, Feng, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization",
      NeurIPS, 2023.

    Args:
      w_lr: learning rate of the logits' Adam optimiser.
      gamma: L2 weight decay of the logits (added to their gradient).
      min_losses: lower bounds :math:`l^*` of the losses, a scalar or (T,);
        default 0. Needed when losses can be negative.
      lagged: if True (default), ``update`` performs the logit step itself with
        the current losses (single forward pass per step); if False, the driver
        calls ``after_step`` after each parameter step (see above).

    Returns:
      A :class:`mtopt.Weighting` that needs only the losses; its state is
      a :class:`FAMOState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import famo
      >>> method = famo()
      >>> state = method.init(2)
      >>> weights, state = method.update(state, jnp.array([1.0, 4.0]))
      >>> [round(float(w), 4) for w in weights]  # uniform z: w_i prop. to 1 / L_i
      [0.8, 0.2]
      >>> # next step: task 0 fell from 1.0 to 0.5, task 1 did not; its logit grows
      >>> weights, state = method.update(state, jnp.array([0.5, 4.0]))
      >>> bool(state.logits[1] > state.logits[0])
      True

      The reference's two-phase form: the driver calls ``after_step``.

      >>> exact = famo(lagged=False)
      >>> state = exact.init(2)
      >>> weights, state = exact.update(state, jnp.array([1.0, 4.0]))
      >>> # ... parameter step, then re-evaluate the losses on the same batch ...
      >>> state = exact.after_step(state, jnp.array([0.5, 4.0]))
      >>> bool(state.logits[1] > state.logits[0])
      True
    """
    w_lr = options.real(w_lr, "w_lr", "famo", nonnegative=True)
    gamma = options.real(gamma, "gamma", "famo", nonnegative=True)
    lagged = options.boolean(lagged, "lagged", "famo")

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> FAMOState:
        del params
        base.check_num_tasks(num_tasks)
        dtype = base.state_dtype()
        if min_losses is None:
            bounds = jnp.zeros((num_tasks,), dtype)
        else:
            bounds = jnp.asarray(min_losses, dtype)
            if bounds.ndim == 0:
                bounds = jnp.full((num_tasks,), bounds, dtype)
            elif bounds.shape != (num_tasks,):
                raise ValueError(
                    f"famo: min_losses must be a scalar or have shape ({num_tasks},) for "
                    f"{num_tasks} tasks, got shape {bounds.shape}."
                )
        logits = jnp.zeros((num_tasks,), dtype)
        w_lr_arr = jnp.asarray(w_lr, dtype)
        gamma_arr = jnp.asarray(gamma, dtype)
        return FAMOState(
            logits=logits,
            logits_opt_state=_logits_optimizer(w_lr_arr, gamma_arr).init(logits),
            prev_losses=jnp.zeros((num_tasks,), dtype),
            has_prev_losses=jnp.asarray(False),
            min_losses=bounds,
            w_lr=w_lr_arr,
            gamma=gamma_arr,
        )

    def update(
        state: FAMOState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, FAMOState]:
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "famo", FAMOState)
        base.check_state_tasks(state.logits.shape[-1], losses.shape[0], "famo")
        out_dtype = base.compute_dtype(losses)
        dtype = base.compute_dtype(losses, state.logits)
        losses = jax.lax.stop_gradient(losses.astype(dtype))
        if lagged:
            state = _logits_step(state, losses, dtype)
        log_gaps = _log_gaps(losses, state.min_losses.astype(dtype))
        weights = jax.nn.softmax(state.logits.astype(dtype) - log_gaps)
        new_state = state._replace(
            prev_losses=losses.astype(state.prev_losses.dtype),
            has_prev_losses=jnp.asarray(True),
        )
        return weights.astype(out_dtype), new_state

    return base.Weighting(
        init=init,
        update=update,
        needs=base.Needs.LOSSES,
        name="famo",
        after_step=None if lagged else famo_update_logits,
        stateful=True,
    )
