r"""GradNorm: learned task weights that equalise the tasks' gradient norms and training rates."""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from mtopt._src import base, gramian as gramian_lib, options

__all__ = ["GradNormState", "gradnorm"]


class GradNormState(NamedTuple):
    """The state of :func:`gradnorm`.

    Attributes:
      logits: (T,) the learnable logits :math:`s`; the weights are
        ``T * softmax(logits)``. Initialised to ones, as in LibMTL.
      logits_opt_state: the state of the optax optimiser that trains ``logits``.
      initial_losses: (T,) the reference losses :math:`L_i(0)` of the training
        rates.
      has_initial_losses: () bool, whether ``initial_losses`` is set (otherwise
        the next ``update`` records its losses there).

    Example:
      >>> import mtopt
      >>> state = mtopt.gradnorm().init(2)
      >>> state.logits.shape, bool(state.has_initial_losses)
      ((2,), False)
    """

    logits: jax.Array
    logits_opt_state: optax.OptState
    initial_losses: jax.Array
    has_initial_losses: jax.Array


def _safe_divide(num: jax.Array, den: jax.Array, default: float) -> jax.Array:
    """``num / den`` where ``den > 0``, ``default`` elsewhere, with no NaN in either branch."""
    positive = den > 0
    return jnp.where(positive, num / jnp.where(positive, den, 1.0), default)


def gradnorm(
    alpha: float = 1.5,
    lr: float = 0.025,
    optimizer: Optional[optax.GradientTransformation] = None,
    initial_losses: Optional[Union[Sequence[float], base.Array]] = None,
) -> base.Weighting:
    r"""GradNorm: train the task weights so that every task trains at a common rate.

    The weights are :math:`w = T\,\mathrm{softmax}(s)` (they sum to **T**) with
    learnable logits :math:`s` kept in the state and trained by their own optax
    optimiser. At each step, with :math:`n_i = \|g_i\| = \sqrt{G_{ii}}` the norm
    of task :math:`i`'s gradient over the parameters the Gramian was taken over,

    .. math::

        G^W_i = w_i n_i, \qquad
        \tilde L_i = \frac{L_i}{L_i(0)}, \qquad
        r_i = \frac{\tilde L_i}{\mathrm{mean}_j \tilde L_j}, \\
        L_{\mathrm{grad}}(s) = \sum_i \Big| G^W_i
            - \mathrm{sg}\big[\mathrm{mean}_j(G^W_j)\, r_i^{\alpha}\big] \Big| ,

    where :math:`\mathrm{sg}` stops the gradient (the target is a constant, as in
    the paper and LibMTL). ``update`` returns the **current** weights
    :math:`w(s)` (those the gradient norms were measured with, and those LibMTL
    applies) and then takes one optimiser step on :math:`s` along
    :math:`\nabla_s L_{\mathrm{grad}}`, computed in closed form:
    :math:`\partial L_{\mathrm{grad}}/\partial w_i = \mathrm{sign}(G^W_i -
    \mathrm{target}_i)\, n_i` (sign(0) = 0, as torch's ``abs``), chained through
    :math:`w = T\,\mathrm{softmax}(s)`. The softmax keeps :math:`\sum_i w_i = T`
    at all times, which is the paper's renormalisation.

    Which parameters: only the diagonal of ``gramian`` is read. The paper takes
    the norms over the last shared layer (cheap); LibMTL over all shared
    parameters or the shared representation. The caller chooses by passing the
    Gramian of that parameter subset; the combined gradient is still
    :math:`\sum_i w_i g_i` over all parameters.

    Conventions pinned (where the references differ):

    - :math:`L_i(0)`: the paper uses the loss at the first step; LibMTL the mean
      loss of the first epoch (and plain equal weights during that epoch). By
      default the losses of the first ``update`` are recorded; pass
      ``initial_losses=`` to fix them (e.g. to epoch-0 means, as LibMTL).
    - The optimiser of :math:`s`: LibMTL trains it with the model's optimiser
      (Adam, lr 1e-4, weight decay 1e-5 by default), the paper with a separate
      learning rate. Ours defaults to ``optax.adam(lr)`` with ``lr = 0.025`` (the
      learning rate Nash-MTL and FAMO use for method parameters). Reproduce
      LibMTL with ``optimizer=optax.chain(optax.add_decayed_weights(1e-5),
      optax.adam(1e-4))``.
    - The logits start at ones (only their differences matter, except under
      weight decay).

    Dtypes: the state is created in JAX's default float dtype
    (float64 under x64) and keeps its dtypes through ``update``; the weights
    are float64 when the losses or the Gramian are, else float32.

    Numerical guards: losses are assumed positive. A zero reference loss gives
    :math:`\tilde L_i = 1`, a non-positive mean gives :math:`r = 1`, negative
    ratios are clamped to 0 before the power; all-zero gradients give a zero
    step. With Adam the step is invariant to the scale of the gradients.

    References:
      Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient
      Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
      ICML, 2018.

    Args:
      alpha: the strength :math:`\alpha` of the restoring force towards a common
        training rate (1.5, LibMTL's default and the paper's NYUv2 value).
      lr: learning rate of the default Adam optimiser of the logits; unused when
        ``optimizer`` is given.
      optimizer: an optax transformation for the logits (its state must be a
        pytree of arrays for ``vmap``); default ``optax.adam(lr)``.
      initial_losses: (T,) fixed reference losses :math:`L_i(0)`; default: the
        losses of the first ``update``.

    Returns:
      A :class:`mtopt.Weighting` that needs the Gramian (only its
      diagonal); its state is a :class:`GradNormState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import gradnorm
      >>> method = gradnorm()
      >>> state = method.init(2)
      >>> gramian = jnp.array([[4.0, 0.0], [0.0, 1.0]])  # gradient norms 2 and 1
      >>> losses = jnp.array([1.0, 1.0])
      >>> for _ in range(200):
      ...     weights, state = method.update(state, losses, gramian=gramian)
      >>> [round(float(w), 1) for w in weights]  # w_i ||g_i|| equalised, sum 2
      [0.7, 1.3]
    """
    alpha = options.real(alpha, "alpha", "gradnorm", nonnegative=True)
    lr = options.real(lr, "lr", "gradnorm", positive=True)
    logits_optimizer = optimizer if optimizer is not None else optax.adam(lr)
    if not (hasattr(logits_optimizer, "init") and hasattr(logits_optimizer, "update")):
        raise TypeError(
            "gradnorm: optimizer must be an optax GradientTransformation, got "
            f"{type(logits_optimizer).__name__}."
        )

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> GradNormState:
        del params
        base.check_num_tasks(num_tasks)
        dtype = base.state_dtype()
        if initial_losses is None:
            reference = jnp.ones((num_tasks,), dtype)
        else:
            reference = jnp.asarray(initial_losses, dtype)
            if reference.shape != (num_tasks,):
                raise ValueError(
                    f"gradnorm: initial_losses must have shape ({num_tasks},) for "
                    f"{num_tasks} tasks, got shape {reference.shape}."
                )
        logits = jnp.ones((num_tasks,), dtype)
        return GradNormState(
            logits=logits,
            logits_opt_state=logits_optimizer.init(logits),
            initial_losses=reference,
            has_initial_losses=jnp.asarray(initial_losses is not None),
        )

    def update(
        state: GradNormState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, GradNormState]:
        del jacobian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "gradnorm", GradNormState)
        base.check_state_tasks(state.logits.shape[-1], num_tasks, "gradnorm")
        gramian = base.check_gramian(gramian, num_tasks, "gradnorm")
        out_dtype = base.compute_dtype(losses, gramian)
        dtype = base.compute_dtype(losses, gramian, state.logits)
        losses = jax.lax.stop_gradient(losses.astype(dtype))
        gramian = jax.lax.stop_gradient(gramian.astype(dtype))

        reference = jnp.where(
            state.has_initial_losses, state.initial_losses.astype(dtype), losses
        )
        logits = state.logits.astype(dtype)
        size = jnp.asarray(num_tasks, dtype)
        z = jax.nn.softmax(logits)
        weights = size * z

        norms = gramian_lib.task_norms(gramian)
        weighted_norms = weights * norms
        loss_ratios = _safe_divide(losses, reference, 1.0)
        rates = jnp.maximum(_safe_divide(loss_ratios, jnp.mean(loss_ratios), 1.0), 0.0)
        target = jnp.mean(weighted_norms) * rates**alpha
        # dL_grad/dw_i, then through w = T softmax(s): T z (u - <z, u>).
        dloss_dw = jnp.sign(weighted_norms - target) * norms
        grad = size * z * (dloss_dw - jnp.sum(z * dloss_dw))

        new_logits, new_opt_state = base.optax_step(
            logits_optimizer, grad.astype(state.logits.dtype), state.logits_opt_state,
            state.logits,
        )
        # Keep every state array in the dtype it came in with (a scan carry's type).
        new_opt_state = jax.tree.map(
            lambda new, old: jnp.asarray(new).astype(jnp.asarray(old).dtype),
            new_opt_state, state.logits_opt_state,
        )
        new_state = GradNormState(
            logits=new_logits.astype(state.logits.dtype),
            logits_opt_state=new_opt_state,
            initial_losses=reference.astype(state.initial_losses.dtype),
            has_initial_losses=jnp.asarray(True),
        )
        return weights.astype(out_dtype), new_state

    return base.Weighting(
        init=init,
        update=update,
        needs=base.Needs.GRAMIAN,
        name="gradnorm",
        stateful=True,
    )
