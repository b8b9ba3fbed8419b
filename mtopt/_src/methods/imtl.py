r"""IMTL: impartial multi-task learning (IMTL-G, IMTL-L and the hybrid IMTL)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mtopt._src import base, gramian as gramian_lib, linalg, rule

__all__ = ["IMTLState", "imtl", "imtl_g", "imtl_g_weights", "imtl_l"]

# LibMTL trains the loss scales with the model's optimizer, whose defaults are
# torch.optim.Adam(lr=1e-4, weight_decay=1e-5) (L2 added to the gradient).
_DEFAULT_LR = 1e-4
_DEFAULT_WEIGHT_DECAY = 1e-5


class IMTLState(NamedTuple):
    """The state of :func:`imtl_l` and :func:`imtl`.

    Attributes:
      log_scales: (T,) the learnable log loss scales :math:`s_i`; task i's loss
        is scaled by :math:`e^{s_i}`.
      opt_state: the state of the optax optimizer that trains ``log_scales``.

    Example:
      >>> import mtopt
      >>> mtopt.imtl_l().init(2).log_scales.tolist()
      [0.0, 0.0]
    """

    log_scales: base.Array
    opt_state: Any


def _imtl_g_weights(gram: base.Array, inv_scales: Optional[base.Array] = None) -> base.Array:
    r"""IMTL-G weights :math:`w \propto G^+ \sqrt{\mathrm{diag}\,G}` with
    :math:`\sum_i w_i / \sigma_i = 1`, where ``inv_scales`` :math:`= 1/\sigma`
    (default ones: the weights sum to 1).

    The Gramian is divided by its largest diagonal entry first (the weights do
    not depend on a common scale) and pseudo-inverted through its
    eigendecomposition, dropping eigenvalues below ``T eps`` of the largest
    (the default of NumPy's and torch's ``pinv``).
    When the normalising sum is numerically zero (e.g. two exactly opposite
    gradients: the equal-projection direction is 0) or the Gramian is zero, the
    weights are 0.
    """
    finfo = jnp.finfo(gram.dtype)
    gram, _ = rule.unit_diagonal_scale(gram)
    norms = gramian_lib.task_norms(gram)
    v = linalg.pinv_solve(gram, norms)
    scaled = v if inv_scales is None else v * inv_scales
    total = linalg.compensated_sum(scaled)  # independent of the task order
    usable = jnp.abs(total) > jnp.sqrt(finfo.eps) * jnp.maximum(
        jnp.sum(jnp.abs(scaled)), 1.0
    )
    return jnp.where(usable, v / jnp.where(usable, total, 1.0), 0.0)


def imtl_g_weights(gramian: base.Array) -> tuple[base.Array, base.SolverInfo]:
    r"""The IMTL-G rule on a Gramian: :math:`w = G^+ n / \mathbf 1^\top G^+ n`,
    :math:`n_i = \sqrt{G_{ii}}` (Liu et al. 2021, in TorchJD's Gramian form).

    The math and the conventions (weights summing to 1, zeros when the
    normalising sum vanishes) are those of :func:`mtopt.imtl_g`, whose
    ``update`` calls this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.

    Returns:
      ``(weights, solver_info)``; the rule is closed form (0 iterations,
      converged).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import imtl_g_weights
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w, _ = imtl_g_weights(jac @ jac.T)
      >>> [round(float(x), 4) for x in w]
      [0.5923, 0.4077]
    """
    return _imtl_g_weights(rule.check_gramian(gramian, "imtl_g")), base.exact_solver_info()


def _check_optimizer(optimizer: Optional[optax.GradientTransformation], method: str):
    if optimizer is None:
        return optax.chain(
            optax.add_decayed_weights(_DEFAULT_WEIGHT_DECAY), optax.adam(_DEFAULT_LR)
        )
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"{method}: optimizer must be an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}."
        )
    return optimizer


def _scale_learner(optimizer: optax.GradientTransformation, method: str):
    """``init`` and the one-step update of the log loss scales shared by IMTL-L and IMTL."""

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> IMTLState:
        del params
        base.check_num_tasks(num_tasks)
        log_scales = jnp.zeros((num_tasks,), base.state_dtype())
        return IMTLState(log_scales=log_scales, opt_state=optimizer.init(log_scales))

    def step(state: IMTLState, losses: base.Array) -> IMTLState:
        # d/ds_i of the IMTL-L objective  sum_i (e^{s_i} L_i - s_i).
        log_scales = state.log_scales
        grad = jnp.exp(log_scales) * losses.astype(log_scales.dtype) - 1.0
        new_scales, opt_state = base.optax_step(optimizer, grad, state.opt_state, log_scales)
        # The state keeps the dtypes init gave it (a lax.scan carry never changes type).
        opt_state = jax.tree_util.tree_map(
            lambda new, old: new.astype(old.dtype) if hasattr(old, "dtype") else new,
            opt_state, state.opt_state,
        )
        return IMTLState(new_scales.astype(log_scales.dtype), opt_state)

    def check(state: IMTLState, losses: base.Array) -> None:
        base.check_state(state, losses.shape[0], method, IMTLState)
        base.check_state_tasks(state.log_scales.shape[0], losses.shape[0], method)

    return init, step, check


def imtl_g() -> base.Weighting:
    r"""IMTL-G: the combination whose projection on every task's unit gradient is equal.

    IMTL-G looks for :math:`d = \sum_i \alpha_i g_i` with :math:`\sum_i \alpha_i = 1`
    and :math:`\langle d, u_i\rangle` the same for every task, where
    :math:`u_i = g_i / \|g_i\|`. The paper's closed form, as LibMTL and Nash-MTL
    write it, is

    .. math::

        D = \begin{bmatrix} g_1 - g_2 \\ \vdots \\ g_1 - g_T \end{bmatrix},\;
        U = \begin{bmatrix} u_1 - u_2 \\ \vdots \\ u_1 - u_T \end{bmatrix},\quad
        \alpha_{2..T} = g_1 U^\top (D U^\top)^{-1},\quad
        \alpha_1 = 1 - \textstyle\sum_{i \ge 2} \alpha_i .

    Equal projections mean :math:`G\alpha = c\,n` with :math:`n_i = \|g_i\|`, so
    when :math:`G` is invertible the same weights are
    :math:`\alpha = G^{-1} n / \mathbf 1^\top G^{-1} n`. We compute this Gramian
    form with a pseudo-inverse, :math:`\alpha = G^+ n / \mathbf 1^\top G^+ n`
    (TorchJD's ``IMTLGWeighting``, defined in Quinton & Rey, "Jacobian Descent
    for Multi-Objective Optimization", 2024): it equals the closed form whenever
    the gradients are linearly independent, and stays defined when they are
    not, where the references invert a singular or meaningless :math:`DU^\top`
    (Nash-MTL retries with :math:`DU^\top + 10^{-8} I`). With dependent
    gradients it is the least-squares solution of :math:`G\alpha \propto n`:
    duplicated tasks share their weight equally, and a zero gradient gets
    weight 0 and imposes no constraint.

    Conventions pinned:

    - The weights multiply the raw gradients and **sum to 1** (LibMTL,
      Nash-MTL, TorchJD). Known value: for :math:`J = [[-4, 1, 1], [6, 1, 1]]`,
      :math:`\alpha = (0.5923, 0.4077)` and :math:`d = (0.0767, 1, 1)`.
    - Degenerate cases: the pseudo-inverse drops eigenvalues below
      :math:`T\,\varepsilon_{\text{mach}}` times the largest of the
      Gramian divided by its largest diagonal entry; when
      :math:`\mathbf 1^\top G^+ n` is numerically zero (two exactly opposite
      gradients, whose equal-projection direction is 0) or every gradient is
      zero, the weights are all 0 (TorchJD returns zeros too).
    - Scaling every gradient by the same factor does not change the weights.
    - Float32 (``python benchmarks/float32_accuracy.py``, TorchJD's test
      matrices): :math:`G^+ n` goes through a pseudo-inverse by a refined
      eigendecomposition and double-float products, so a permutation of the tasks moves the
      direction by at most 8.7e-7 (TorchJD's float32 tolerance: 1e-4) and the
      float32 direction is within 5.6e-5 :math:`\max_i \|g_i\|` of the float64
      one. Rank-deficient Gramians with opposite rows and norms spread over
      1e3 and more remain permutation-sensitive in float32 (about 1%, see
      ``KNOWN_FAILURES`` in ``tests/test_hypothesis_methods.py``).

    Reference: Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards
    Impartial Multi-task Learning", ICLR 2021.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import imtl_g
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> method = imtl_g()
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w], [round(float(x), 4) for x in w @ jac]
      ([0.5923, 0.4077], [0.0767, 1.0, 1.0])
    """

    return rule.as_method(
        lambda g, losses, preference, key: imtl_g_weights(g), name="imtl_g", solver=False
    )


def imtl_l(optimizer: Optional[optax.GradientTransformation] = None) -> base.Weighting:
    r"""IMTL-L: learnable loss scales that drive every scaled loss towards 1.

    Each task loss is replaced by :math:`L'_i = e^{s_i} L_i - s_i` with a
    learnable :math:`s_i` (init 0). The model sees the gradient of
    :math:`e^{s_i} L_i`, so the weights on the raw losses and gradients are

    .. math::

        w_i = e^{s_i}, \qquad
        \frac{\partial L'_i}{\partial s_i} = e^{s_i} L_i - 1 ,

    and at the fixed point :math:`e^{s_i} L_i = 1`: every scaled loss equals 1
    whatever its original scale.

    Conventions pinned:

    - ``update`` returns the weights of the current :math:`s`, then :math:`s`
      takes one step of its own optax ``optimizer`` on the gradient above.
    - Default optimizer: ``optax.chain(optax.add_decayed_weights(1e-5),
      optax.adam(1e-4))``, i.e. ``torch.optim.Adam(lr=1e-4,
      weight_decay=1e-5)``: LibMTL trains :math:`s` with the model's optimizer,
      whose defaults these are.
    - The weights are positive and do not sum to a constant; ``info.total`` is
      :math:`\sum_i e^{s_i} L_i` (the term :math:`-\sum_i s_i`, constant for
      the model, is left out).

    Reference: Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards
    Impartial Multi-task Learning", ICLR 2021.

    Args:
      optimizer: optax transformation that trains the log scales.

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.LOSSES``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from mtopt import imtl_l
      >>> method = imtl_l(optax.sgd(0.1))
      >>> w, state = method.update(method.init(2), jnp.array([3.0, 0.5]))
      >>> w.tolist(), [round(float(s), 4) for s in state.log_scales]
      ([1.0, 1.0], [-0.2, 0.05])
    """
    tx = _check_optimizer(optimizer, "imtl_l")
    init, learn_scales, check_state = _scale_learner(tx, "imtl_l")

    def update(
        state: IMTLState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, IMTLState]:
        del gramian, jacobian, key, preference
        losses = base.check_losses(losses)
        check_state(state, losses)
        dtype = base.compute_dtype(losses)
        weights = jnp.exp(state.log_scales.astype(dtype))
        return weights, learn_scales(state, losses)

    return base.Weighting(
        init=init, update=update, needs=base.Needs.LOSSES, name="imtl_l", stateful=True
    )


def imtl(optimizer: Optional[optax.GradientTransformation] = None) -> base.Weighting:
    r"""IMTL: IMTL-L loss scaling followed by IMTL-G on the scaled gradients (LibMTL's IMTL).

    The task losses are scaled as in :func:`imtl_l`, :math:`L'_i = e^{s_i} L_i
    - s_i`, whose gradients are :math:`\tilde g_i = e^{s_i} g_i`; IMTL-G
    (:func:`imtl_g`) then combines these scaled gradients with weights
    :math:`\alpha` summing to 1. On the raw gradients and losses the weights are

    .. math::

        w_i = \alpha_i\, e^{s_i}, \qquad d = \sum_i \alpha_i \tilde g_i = \sum_i w_i g_i .

    The unit gradients do not depend on :math:`s`, so the loss scales change
    only the length of the IMTL-G direction, not where it points: with
    :math:`v = G^+ n` (as in :func:`imtl_g`), :math:`w = v / \sum_i e^{-s_i}
    v_i`, which is how it is computed (never forming the scaled Gramian
    :math:`\mathrm{diag}(e^s) G \mathrm{diag}(e^s)`, so extreme scales
    neither overflow nor underflow). For invertible :math:`G` this is exactly
    IMTL-G on the scaled gradients; for singular :math:`G` it is the
    pseudo-inverse solution of the unscaled problem.

    Conventions pinned:

    - The shared-parameter direction equals LibMTL's ``IMTL`` exactly. The
      weights returned are :math:`w` (not :math:`\alpha`, which is
      :math:`w_i e^{-s_i}`), so ``info.total`` is :math:`\sum_i w_i L_i` and
      a task-specific head receives :math:`w_i \nabla L_i`; LibMTL gives heads
      the unweighted :math:`e^{s_i}\nabla L_i` instead.
    - :math:`s` is trained exactly as in :func:`imtl_l` (same default
      optimizer), from the losses of the step; the weights use the current
      :math:`s`.

    Reference: Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards
    Impartial Multi-task Learning", ICLR 2021.

    Args:
      optimizer: optax transformation that trains the log scales.

    Returns:
      A stateful :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import imtl
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> method = imtl()
      >>> w, state = method.update(method.init(2), jnp.array([2.0, 0.5]), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w @ jac]   # s = 0 at the first step: IMTL-G
      [0.0767, 1.0, 1.0]
    """
    tx = _check_optimizer(optimizer, "imtl")
    init, learn_scales, check_state = _scale_learner(tx, "imtl")

    def update(
        state: IMTLState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, IMTLState]:
        del jacobian, key, preference
        losses = base.check_losses(losses)
        check_state(state, losses)
        gramian = base.check_gramian(gramian, losses.shape[0], "imtl")
        dtype = base.compute_dtype(gramian, losses)
        log_scales = state.log_scales.astype(dtype)
        # With S = diag(e^s), IMTL-G on S G S gives alpha = S^-1 v / sum(S^-1 v) with
        # v = G^+ n, so w = S alpha = v / sum(e^-s v): computed without forming S G S.
        # Factor e^-s = e^-min(s) e^-(s - min s) so nothing overflows.
        lowest = jnp.min(log_scales)
        weights = _imtl_g_weights(gramian.astype(dtype), jnp.exp(lowest - log_scales))
        weights = weights * jnp.exp(lowest)
        return weights, learn_scales(state, losses)

    return base.Weighting(
        init=init, update=update, needs=base.Needs.GRAMIAN, name="imtl", stateful=True
    )
