"""CAGrad: conflict-averse gradient descent (Liu et al. 2021)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from mtopt._src import base, simplex

Array = jax.Array
Reduction = Literal["mean", "sum"]

# Smoothing of the norm in the inner objective, in units of the trace-normalised Gramian.
_SMOOTHING = 1e-12
# Bound on the step-size doublings of the backtracking line search.
_MAX_DOUBLINGS = 60
# Floor on the curvature estimate (the Gramian is trace-normalised: its entries are <= 1).
_MIN_LIPSCHITZ = 1e-6


def _inner_problem(g: Array, radius: Array, max_iter: int, tol: float) -> tuple[Array, Array]:
    r"""``argmin_{w in simplex} w^T G b + radius * sqrt(w^T G w)`` (``b = 1/T``).

    Accelerated projected gradient (FISTA with monotone backtracking on the
    step size and function-value restart) on the norm smoothed by
    ``sqrt(. + 1e-12)``. Returns ``(w, iterations)``.
    """
    num_tasks = g.shape[0]
    dtype = g.dtype
    b = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    gb = g @ b
    eps = jnp.finfo(dtype).eps

    def objective(w: Array) -> Array:
        return w @ gb + radius * jnp.sqrt(jnp.maximum(w @ g @ w, 0.0) + _SMOOTHING)

    def gradient(w: Array) -> Array:
        gw = g @ w
        return gb + radius * gw / jnp.sqrt(jnp.maximum(w @ gw, 0.0) + _SMOOTHING)

    def step(carry):
        it, w, z, t, lipschitz, _ = carry
        f_z = objective(z)
        grad_z = gradient(z)
        # Differences of the objective below this are rounding, not a too-long step.
        rounding = 16 * eps * (jnp.abs(f_z) + radius + jnp.max(jnp.abs(gb)))

        def candidate(lip):
            return simplex.projection_simplex(z - grad_z / lip)

        def too_long(c):
            k, lip = c
            w_new = candidate(lip)
            diff = w_new - z
            bound = f_z + grad_z @ diff + 0.5 * lip * (diff @ diff)
            return (k < _MAX_DOUBLINGS) & (objective(w_new) > bound + rounding)

        _, lipschitz = jax.lax.while_loop(
            too_long, lambda c: (c[0] + 1, 2.0 * c[1]), (0, lipschitz)
        )
        w_new = candidate(lipschitz)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = objective(w_new) > objective(w)
        momentum = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        z_new = w_new + momentum * (w_new - w)
        t_new = jnp.where(restart, 1.0, t_new).astype(dtype)
        change = jnp.sum(jnp.abs(w_new - w))
        return it + 1, w_new, z_new, t_new, lipschitz, change

    # An l1 change below a few T * eps is rounding noise: stop there even if a
    # smaller tol was asked for (float32 would otherwise always hit max_iter).
    stop_below = jnp.maximum(tol, 4.0 * g.shape[0] * jnp.finfo(dtype).eps)

    def not_done(carry):
        it, _, _, _, _, change = carry
        return (it < max_iter) & (change > stop_below)

    # The curvature comes from radius * ||g_w||: its Hessian is at most radius * lambda_max / ||g_w||
    # (lambda_max <= 1 after trace normalisation); start from its value at w = b.
    gb_norm = jnp.sqrt(jnp.maximum(b @ gb, 0.0))
    lipschitz0 = jnp.maximum(radius / jnp.maximum(gb_norm, 1e-6), _MIN_LIPSCHITZ)
    init = (
        jnp.zeros((), jnp.int32),
        b,
        b,
        jnp.ones((), dtype),
        lipschitz0.astype(dtype),
        jnp.full((), jnp.inf, dtype),
    )
    iterations, w, _, _, _, _ = jax.lax.while_loop(not_done, step, init)
    return w, iterations


def cagrad(
    c: float = 0.4,
    rescale: int = 1,
    *,
    reduction: Reduction = "mean",
    norm_eps: float = 1e-4,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> base.Weighting:
    r"""CAGrad: the direction that best improves the worst task near the mean gradient.

    CAGrad maximises the worst directional derivative in a ball around the
    mean gradient :math:`g_0 = \frac1T \sum_i g_i`:

    .. math::
        \max_d \min_i \langle g_i, d\rangle
        \quad\text{s.t.}\quad \|d - g_0\| \le c \|g_0\| .

    Its dual is a problem on the simplex that reads only the Gramian,

    .. math::
        w^* = \arg\min_{w \in \Delta_T} w^\top G b + c\|g_0\| \sqrt{w^\top G w},
        \qquad b = \mathbf 1 / T, \quad \|g_0\| = \sqrt{b^\top G b},

    and the direction is :math:`d = g_0 + \frac{c \|g_0\|}{\|g_w\|} g_w`
    (:math:`g_w = J^\top w^*`), returned as weights on the raw gradients:
    :math:`w = b + \frac{c\|g_0\|}{\|g_w\|} w^*`, then divided by
    :math:`1 + c^2` (``rescale=1``), by :math:`1 + c` (``rescale=2``) or left
    as is (``rescale=0``). With :math:`c < 1` the iterates converge to a
    Pareto-stationary point; with :math:`c \ge 1`, to a minimiser of the
    average loss (paper, Theorem 3.2).

    Solver: accelerated projected gradient on the simplex (backtracking step
    size, function-value restart; the norm is smoothed as
    :math:`\sqrt{\cdot + 10^{-12}}` on the trace-normalised Gramian) inside a
    ``lax.while_loop``: at most ``max_iter`` iterations, stopping when an
    iteration moves :math:`w^*` by less than ``tol`` in the l1 norm. The
    reference code uses scipy's SLSQP from :math:`w = b`; TorchJD uses cvxpy.

    Reference: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent
    for Multi-task Learning", NeurIPS 2021 (code: Cranial-XIX/CAGrad; defaults
    ``c = 0.4`` as nash-mtl's CLI, LibMTL's ``calpha = 0.5``; ``rescale = 1``).

    Conventions pinned (the references disagree):

    - ``reduction="mean"`` (default): the base is the *mean* gradient, as the
      paper, its code, LibMTL and TorchJD; the weights sum to
      :math:`(1 + c\|g_0\|/\|g_w\|)/(\text{rescale factor})`.
      ``reduction="sum"`` multiplies every weight by T, as nash-mtl's
      ``overwrite_grad`` ("to match the sum loss").
    - ``rescale``: the paper's code, LibMTL and nash-mtl default to 1; TorchJD
      does not rescale (``rescale=0``). TorchJD's value for
      ``J = [[-4, 1, 1], [6, 1, 1]]``, ``c = 0.5``, direction
      ``[0.1835, 1.2041, 1.2041]``, is ``rescale=0``.
    - When :math:`\|g_w\|` is below ``norm_eps`` (trace-normalised units, as
      TorchJD's ``norm_eps = 1e-4``) the correction term is dropped and the
      weights are :math:`b` (the direction is :math:`g_0`, which is then a
      solution of the primal problem); TorchJD returns zero weights there,
      the reference code ``g_0 + c g_w / (\|g_w\| + 10^{-8})``.

    Args:
      c: the radius of the ball, relative to :math:`\|g_0\|` (non-negative).
      rescale: 0, 1 or 2, see above.
      reduction: ``"mean"`` or ``"sum"``, see above.
      norm_eps: :math:`\|g_w\|` (trace-normalised) below which the correction
        is dropped.
      max_iter: bound on the inner solver's iterations.
      tol: l1 change of :math:`w^*` at which the inner solver stops.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import cagrad
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> method = cagrad(c=0.5, rescale=0)
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w @ jac]
      [0.1835, 1.2041, 1.2041]
    """
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
        raise ValueError(f"cagrad: c must be a non-negative float, got {c!r}.")
    if rescale not in (0, 1, 2) or isinstance(rescale, bool):
        raise ValueError(f"cagrad: rescale must be 0, 1 or 2, got {rescale!r}.")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"cagrad: reduction must be 'mean' or 'sum', got {reduction!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"cagrad: max_iter must be a positive int, got {max_iter!r}.")
    for name, value in (("norm_eps", norm_eps), ("tol", tol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"cagrad: {name} must be a non-negative float, got {value!r}.")
    c = float(c)
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        gramian = base.check_gramian(gramian, num_tasks, "cagrad")
        dtype = base.compute_dtype(gramian, losses)
        g = gramian.astype(dtype)
        g = 0.5 * (g + g.T)
        trace = jnp.trace(g)
        nonzero = trace > jnp.finfo(dtype).tiny
        g = jnp.where(nonzero, g / jnp.where(nonzero, trace, 1.0), 0.0)
        b = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
        radius = c * jnp.sqrt(jnp.maximum(b @ g @ b, 0.0))
        w_star, _ = _inner_problem(g, radius, max_iter, tol)
        gw_norm = jnp.sqrt(jnp.maximum(w_star @ g @ w_star, 0.0))
        keep = gw_norm >= norm_eps
        coef = jnp.where(keep, radius / jnp.where(keep, gw_norm, 1.0), 0.0)
        weights = (b + coef * w_star) / divisor
        if reduction == "sum":
            weights = weights * num_tasks
        return weights, state

    return base.Weighting(
        init=base.init_empty_state, update=update, needs=base.Needs.GRAMIAN, name="cagrad"
    )
