"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mtopt._src import base, options

Array = jax.Array


class UncertaintyState(NamedTuple):
    """State of uncertainty weighting.

    Attributes:
      log_vars: (T,) learnable log-variances :math:`s_i = \\log \\sigma_i^2`.
      opt_state: the state of the optax optimizer that trains ``log_vars``.

    Example:
      >>> import mtopt
      >>> mtopt.uncertainty().init(2).log_vars.tolist()
      [0.0, 0.0]
    """

    log_vars: Array
    opt_state: Any


def uncertainty(
    optimizer: Optional[optax.GradientTransformation] = None,
    *,
    init_log_var: float = 0.0,
) -> base.Weighting:
    r"""Homoscedastic uncertainty weighting with learnable log-variances.

    The method minimises, jointly over the model and :math:`s_i = \log\sigma_i^2`,

    .. math::
        \mathcal{L}(\theta, s) = \sum_i \tfrac12 \big(e^{-s_i} L_i(\theta) + s_i\big),

    so the weights on the raw task losses are :math:`w_i = \tfrac12 e^{-s_i}` and
    :math:`s` follows :math:`\partial\mathcal{L}/\partial s_i =
    \tfrac12(1 - e^{-s_i} L_i)`, whose fixed point is :math:`s_i = \log L_i`
    (weight :math:`1 / (2 L_i)`). Reference: Kendall, Gal & Cipolla,
    "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
    and Semantics", CVPR 2018, in the common form that uses
    :math:`\tfrac12 e^{-s}` for every task (Nash-MTL's and LibMTL's code; the
    paper has :math:`1/\sigma^2` for classification tasks).

    The log-variances live in the method state and are trained by their own
    optax optimizer inside ``update``: the weights returned for a step are
    those of the current :math:`s`, then :math:`s` takes one optimizer step on
    this step's losses. Conventions pinned: weights are positive and do not sum
    to a constant; ``info.total`` is :math:`\sum_i w_i L_i` (the term
    :math:`\sum_i s_i/2`, constant for the model, is not included).
    Defaults: Adam with learning rate 0.025 and :math:`s = 0` (Nash-MTL's
    ``--method-params-lr`` and init; LibMTL initialises at -0.5 and trains
    with the model's optimizer).

    Dtypes: ``log_vars`` and the optimizer state are created in
    JAX's default float dtype (float64 under x64) and keep their
    dtypes through ``update``; the weights are float64 for float64 losses,
    else float32.

    Args:
      optimizer: optax transformation for ``log_vars`` (default
        ``optax.adam(0.025)``).
      init_log_var: initial value of every :math:`s_i`.

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.LOSSES``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> method = mtopt.uncertainty()
      >>> w, state = method.update(method.init(2), jnp.array([4.0, 0.25]))
      >>> w.tolist()
      [0.5, 0.5]
      >>> [round(float(s), 3) for s in state.log_vars]   # moves toward log L
      [0.025, -0.025]
    """
    tx = optax.adam(0.025) if optimizer is None else optimizer
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(
            "uncertainty: optimizer must be an optax GradientTransformation, got "
            f"{type(tx).__name__}."
        )
    init_log_var = options.real(init_log_var, "init_log_var", "uncertainty")

    def loss_of_log_vars(log_vars: Array, losses: Array) -> Array:
        return 0.5 * jnp.sum(jnp.exp(-log_vars) * losses + log_vars)

    def init(num_tasks: int, params=None) -> UncertaintyState:
        del params
        base.check_num_tasks(num_tasks)
        log_vars = jnp.full((num_tasks,), init_log_var, base.state_dtype())
        return UncertaintyState(log_vars=log_vars, opt_state=tx.init(log_vars))

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        base.check_state(state, losses.shape[0], "uncertainty", UncertaintyState)
        base.check_state_tasks(state.log_vars.shape[0], losses.shape[0], "uncertainty")
        log_vars = state.log_vars
        weights = (0.5 * jnp.exp(-log_vars)).astype(base.compute_dtype(losses))
        grad = jax.grad(loss_of_log_vars)(log_vars, losses.astype(log_vars.dtype))
        new_log_vars, opt_state = base.optax_step(tx, grad, state.opt_state, log_vars)
        # Keep every state array in the dtype it came in with (a scan carry's type).
        opt_state = jax.tree.map(
            lambda new, old: jnp.asarray(new).astype(jnp.asarray(old).dtype),
            opt_state, state.opt_state,
        )
        new_state = UncertaintyState(
            log_vars=new_log_vars.astype(log_vars.dtype), opt_state=opt_state
        )
        return weights, new_state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.LOSSES, name="uncertainty", stateful=True
    )
