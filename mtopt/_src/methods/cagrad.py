"""CAGrad: conflict-averse gradient descent (Liu et al. 2021)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from mtopt._src import base, min_norm, nonneg_qp, options, rule, simplex

Array = jax.Array
Reduction = Literal["mean", "sum"]

# Smoothing of the norm in the inner objective, in units of the trace-normalised Gramian.
_SMOOTHING = 1e-12
# Bound on the step-size doublings of the backtracking line search.
_MAX_DOUBLINGS = 60
# Floor on the curvature estimate (the Gramian is trace-normalised: its entries are <= 1).
_MIN_LIPSCHITZ = 1e-6
# Rounding bounds are this many T * eps times the size of the terms.
_ROUNDING = 8.0


class _Bound(NamedTuple):
    """A computed objective value and a bound on its rounding error."""

    value: Array
    rounding: Array


def _dual(g: Array, gb: Array, radius: Array, w: Array) -> _Bound:
    r"""CAGrad's dual objective ``D(w) = w^T G b + radius ||g_w||`` (no smoothing).

    Rounding: ``T eps`` times the size of the terms, and for the norm
    :math:`\sqrt{x}`, :math:`x = w^\top G w` computed with error at most
    :math:`\delta = 8 T \epsilon\, |w|^\top |G| |w|`, the error
    :math:`\delta / (\sqrt{x} + \sqrt{x + \delta})` (about
    :math:`\sqrt{\delta}` when :math:`g_w \approx 0`: the Gramian resolves
    :math:`\|g_w\|` only to the square root of the precision there).
    """
    ueps = _ROUNDING * g.shape[0] * jnp.finfo(g.dtype).eps
    x = jnp.maximum(w @ g @ w, 0.0)
    delta = ueps * (jnp.abs(w) @ jnp.abs(g) @ jnp.abs(w))
    norm_error = delta / jnp.maximum(jnp.sqrt(x) + jnp.sqrt(x + delta), jnp.finfo(g.dtype).tiny)
    value = w @ gb + radius * jnp.sqrt(x)
    return _Bound(value, ueps * (jnp.abs(w) @ jnp.abs(gb)) + radius * norm_error)


def _primal(g: Array, weights: Array) -> _Bound:
    """``P(d) = min_i <g_i, d>`` of ``d = J^T weights`` and its rounding bound."""
    ueps = _ROUNDING * g.shape[0] * jnp.finfo(g.dtype).eps
    return _Bound(jnp.min(g @ weights), ueps * jnp.max(jnp.abs(g) @ jnp.abs(weights)))


def _recovered(g: Array, radius: Array, w: Array) -> Array:
    r"""Weights of :math:`d(w) = g_0 + r g_w / \|g_w\|` (on the sphere: feasible); the
    weights of :math:`g_0` when :math:`g_w = 0`."""
    num_tasks = g.shape[0]
    gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
    usable = gw_norm > 0
    coef = jnp.where(usable, radius / jnp.where(usable, gw_norm, 1.0), 0.0)
    return jnp.full((num_tasks,), 1.0 / num_tasks, g.dtype) + coef * w


def _residual(dual: _Bound, primal: _Bound, scale: Array) -> Array:
    """The duality gap beyond the rounding of its two terms, relative to ``scale``."""
    gap = dual.value - primal.value - dual.rounding - primal.rounding
    return jnp.maximum(gap, 0.0) / scale


def _smaller(x: _Bound, y: _Bound) -> _Bound:
    return jax.tree.map(lambda u, v: jnp.where(x.value <= y.value, u, v), x, y)


def _inner_problem(
    g: Array,
    radius: Array,
    scale: Array,
    c: Array,
    max_iter: Array,
    tol: Array,
    other_dual: _Bound,
) -> tuple[Array, Array]:
    r"""``argmin_{w in simplex} w^T G b + radius * sqrt(w^T G w)`` (``b = 1/T``).

    Accelerated projected gradient (FISTA with monotone backtracking on the
    step size and function-value restart) on the norm smoothed by
    ``sqrt(. + 1e-12)``, stopped by CAGrad's duality gap: the smaller of the
    dual objective at the iterate and ``other_dual`` (the dual value of the
    min-norm point), minus the primal value of the direction recovered from the
    iterate (or 0 when ``c >= 1``, see the certificate), relative to ``scale``,
    beyond its rounding bound, at most ``tol``, or when an iteration moves
    ``w`` by less than ``4 T eps`` (l1): rounding level, where the gap cannot
    improve any more. Returns ``(w, iterations)``.
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

    # The stopping test allows only the rounding of well-scaled terms, T eps scale, for
    # the iterate (the full bounds of _dual and _primal, which the reported certificate
    # uses, are worst cases and would stop float32 early); the min-norm candidate keeps
    # its full bound (its ||g_w|| ~ 0 is resolved only to sqrt(eps)).
    plain = num_tasks * jnp.finfo(dtype).eps * scale

    def certificate(w: Array) -> Array:
        primal = _Bound(jnp.min(g @ _recovered(g, radius, w)), plain)
        # For c >= 1 the value 0 is attained by the dual-cone projection, which is what
        # is returned when the dual value (other_dual, the min-norm point's) is ~0.
        zero = _Bound(jnp.zeros((), dtype), jnp.zeros((), dtype))
        primal = jax.tree.map(
            lambda u, v: jnp.where((c >= 1.0) & (primal.value < 0), v, u), primal, zero
        )
        dual = _smaller(_Bound(_dual(g, gb, radius, w).value, plain), other_dual)
        return _residual(dual, primal, scale)

    def step(carry):
        it, w, z, t, lipschitz, _, _ = carry
        f_z = objective(z)
        grad_z = gradient(z)
        # Differences of the objective below this are rounding, not a too-long step.
        rounding = 16 * eps * (jnp.abs(f_z) + radius + jnp.max(jnp.abs(gb)))

        def candidate(lip):
            return simplex.projection_simplex(z - grad_z / lip)

        def too_long(search):
            k, lip = search
            w_new = candidate(lip)
            diff = w_new - z
            bound = f_z + grad_z @ diff + 0.5 * lip * (diff @ diff)
            return (k < _MAX_DOUBLINGS) & (objective(w_new) > bound + rounding)

        _, lipschitz = jax.lax.while_loop(
            too_long, lambda search: (search[0] + 1, 2.0 * search[1]), (0, lipschitz)
        )
        w_new = candidate(lipschitz)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
        restart = objective(w_new) > objective(w)
        momentum = jnp.where(restart, 0.0, (t - 1.0) / t_new)
        z_new = w_new + momentum * (w_new - w)
        t_new = jnp.where(restart, 1.0, t_new).astype(dtype)
        change = jnp.sum(jnp.abs(w_new - w))
        return it + 1, w_new, z_new, t_new, lipschitz, certificate(w_new), change

    # Iterates that move by less than this (l1) are at rounding level: the gap cannot
    # improve any more, whatever tol asks (float32 would otherwise run to max_iter).
    still = 4.0 * num_tasks * eps

    def not_done(carry):
        it, _, _, _, _, residual, change = carry
        return (it < max_iter) & (residual > tol) & (change > still)

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
        certificate(b),
        jnp.full((), jnp.inf, dtype),
    )
    iterations, w, _, _, _, _, _ = jax.lax.while_loop(not_done, step, init)
    return w, iterations


def _options(c, rescale, reduction, norm_eps, max_iter, tol) -> dict:
    return dict(
        c=options.real(c, "c", "cagrad", nonnegative=True),
        rescale=options.choice(rescale, "rescale", "cagrad", (0, 1, 2)),
        reduction=options.choice(reduction, "reduction", "cagrad", ("mean", "sum")),
        norm_eps=options.real(norm_eps, "norm_eps", "cagrad", nonnegative=True),
        max_iter=options.integer(max_iter, "max_iter", "cagrad"),
        tol=options.real(tol, "tol", "cagrad", nonnegative=True),
    )


def cagrad_weights(
    gramian: Array,
    *,
    c: float = 0.4,
    rescale: int = 1,
    reduction: Reduction = "mean",
    norm_eps: float = 1e-4,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> tuple[Array, base.SolverInfo]:
    r"""The CAGrad rule on a Gramian: the weights of
    :math:`\arg\max_{\|d - g_0\| \le c \|g_0\|} \min_i \langle g_i, d\rangle`
    (Liu et al. 2021), rescaled and reduced as ``rescale`` and ``reduction`` say.

    The math, the solver and its certificate, the options and the conventions
    are those of :func:`mtopt.cagrad`, whose ``update`` calls this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      c, rescale, reduction, norm_eps, max_iter, tol: as in :func:`mtopt.cagrad`.

    Returns:
      ``(weights, solver_info)`` (the duality-gap certificate).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import cagrad_weights
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w, info = cagrad_weights(jac @ jac.T, c=0.5, rescale=0)
      >>> [round(float(x), 4) for x in w @ jac], bool(info.converged)
      ([0.1835, 1.2041, 1.2041], True)
    """
    opts = _options(c, rescale, reduction, norm_eps, max_iter, tol)
    c = opts["c"]
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[opts["rescale"]]
    g = rule.check_gramian(gramian, "cagrad")
    num_tasks = g.shape[0]
    g = 0.5 * (g + g.T)
    trace = jnp.trace(g)
    nonzero = trace > jnp.finfo(g.dtype).tiny
    g = jnp.where(nonzero, g / jnp.where(nonzero, trace, 1.0), 0.0)
    if c == 0.0:  # the ball is {g0}: d = g0, nothing to solve
        raw, info = jnp.full((num_tasks,), 1.0 / num_tasks, g.dtype), base.exact_solver_info()
    else:
        raw, info = _solve(g, jnp.asarray(c, g.dtype), opts["norm_eps"], opts["max_iter"],
                           opts["tol"])
    weights = raw / divisor
    if opts["reduction"] == "sum":
        weights = weights * num_tasks
    return weights, info


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
    mean gradient :math:`g_0 = \frac1T \sum_i g_i = J^\top b`, :math:`b = \mathbf 1/T`:

    .. math::
        P^* = \max_d \min_i \langle g_i, d\rangle
        \quad\text{s.t.}\quad \|d - g_0\| \le r, \qquad r = c \|g_0\| .

    Writing :math:`\min_i \langle g_i, d\rangle = \min_{w \in \Delta_T}
    \langle g_w, d\rangle` (:math:`g_w = J^\top w`) and exchanging min and max
    (a bilinear saddle problem on compact convex sets: strong duality) gives
    the dual, which reads only the Gramian:

    .. math::
        D^* = \min_{w \in \Delta_T} \; w^\top G b + r \sqrt{w^\top G w} = P^*,
        \qquad \|g_0\| = \sqrt{b^\top G b} .

    Recovering the direction from a dual solution :math:`w^*`:

    - :math:`g_{w^*} \ne 0`: the maximiser of :math:`\langle g_{w^*}, d\rangle`
      on the ball is unique, :math:`d^* = g_0 + r\, g_{w^*} / \|g_{w^*}\|`, and
      it is the primal solution (unique). Weights on the raw gradients:
      :math:`b + \frac{r}{\|g_{w^*}\|} w^*`.
    - :math:`g_{w^*} = 0` (0 is in the convex hull of the gradients and the
      dual optimum; for :math:`c > 1` this happens exactly when 0 is in the
      hull, since then :math:`D(w) \ge (c - 1)\|g_0\| \|g_w\| > 0` for
      :math:`g_w \ne 0`): then :math:`P^* = D^* = 0`, and because 0 in the
      hull makes :math:`\min_i \langle g_i, d\rangle \le 0` for every d, the
      primal solutions are exactly the non-conflicting directions in the ball,
      :math:`\{d : J d \ge 0\} \cap \{\|d - g_0\| \le r\}`. The one returned
      is the one nearest :math:`g_0`: the projection :math:`\Pi(g_0)` of
      :math:`g_0` onto the dual cone :math:`\{d : J d \ge 0\}` (DualProj's
      direction; weights ``v`` from the dual-cone QP of
      :func:`mtopt.rules.dualproj_weights`). It
      lies in the ball whenever the primal value is 0 (the nearest point of the
      cone is at least as near as any point of the non-empty intersection); for
      :math:`c \ge 1` always, since :math:`d = 0` is feasible. When rounding
      puts it outside the ball (a near-degenerate :math:`c < 1` case) it is
      moved back onto the sphere along the segment from :math:`g_0`.

    Numerically the second case is considered when :math:`\|g_{w}\|` is
    below ``norm_eps`` (trace-normalised units, TorchJD's threshold) or, for
    :math:`c \ge 1`, when the first formula would conflict (value below 0,
    which :math:`d = 0` beats); the first formula is still kept there when
    its primal value beats the projection's beyond rounding (a small but
    genuine optimal :math:`g_w`). Either way the direction is non-conflicting
    for :math:`c \ge 1` (``J d >= 0`` up to rounding), as the optimum is.

    The weights are then divided by :math:`1 + c^2` (``rescale=1``), by
    :math:`1 + c` (``rescale=2``) or left as is (``rescale=0``), and
    multiplied by T for ``reduction="sum"``, in both cases alike. With
    :math:`c < 1` the iterates converge to a Pareto-stationary point; with
    :math:`c \ge 1`, to a minimiser of the average loss (paper, Theorem 3.2).

    Solver: two dual candidates. (1) The min-norm point of the hull
    (:func:`mtopt.rules.min_norm_simplex`, exact): it solves the dual whenever 0 is
    in the hull and :math:`c \ge 1` (:math:`g_w = 0`). (2) Accelerated
    projected gradient on the dual over the simplex (monotone backtracking
    step size, function-value restart; the norm is smoothed as
    :math:`\sqrt{\cdot + 10^{-12}}` on the trace-normalised Gramian) inside a
    ``lax.while_loop``, at most ``max_iter`` iterations, stopped by the
    duality gap of the primal/dual pair: the smaller dual value
    :math:`D(w)` of the two candidates minus the primal value
    :math:`P(d) = \min_i \langle g_i, d\rangle` of the feasible direction
    recovered from the iterate (:math:`d(w)`; for :math:`c \ge 1` at least
    0, the projection's value), less the rounding error of both (``8 T eps``
    times the size of their terms; for :math:`\|g_w\|` read from the
    Gramian near 0 that is about :math:`\sqrt{\epsilon}`), relative to
    :math:`\text{scale} = (1 + c)\|g_0\| \max_i \|g_i\|` (the size of every
    :math:`\langle g_i, d\rangle`), at most ``tol``. The candidate with the
    smaller dual value gives :math:`w^*`. The state
    (:class:`mtopt.SolverState`) reports that certificate for the direction
    actually returned: ``residual`` (it bounds how far the value of ``d`` is
    below the optimum, relative to the scale), ``converged = residual <=
    tol`` and the iterations (first-order, min-norm, and in the second case
    the dual-cone projection's). ``c = 0`` is exact (:math:`d = g_0`).

    What the references return when :math:`g_w \approx 0` (checked in their
    code): TorchJD (``_CAGradWeighting``, cvxpy/CLARABEL) returns zero
    weights, :math:`d = 0`, when :math:`\|g_w\| <` ``norm_eps``: also a
    solution for :math:`c \ge 1` (but no nearer :math:`g_0` than
    :math:`\Pi(g_0)`), outside the ball for :math:`c < 1`. The paper's code
    (Cranial-XIX/CAGrad), LibMTL and nash-mtl (scipy SLSQP) return
    :math:`g_0 + r\, g_w / (\|g_w\| + 10^{-8})`, whose direction is then set
    by the solver's residual :math:`g_w` and can conflict (their formula
    re-run with scipy's SLSQP on ``J = [[1], [-2]]``, ``c = 2``, ``rescale=1``
    gives ``J d = [0.1, -0.2]``; mtopt before this fix returned the mean,
    ``J d = [-0.1, 0.2]``). mtopt returns :math:`\Pi(g_0)`
    (here :math:`d = 0`: the dual cone is :math:`\{0\}`).

    Reference: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent
    for Multi-task Learning", NeurIPS 2021 (code: Cranial-XIX/CAGrad; defaults
    ``c = 0.4`` as nash-mtl's CLI, LibMTL's ``calpha = 0.5``; ``rescale = 1``).

    Conventions pinned (the references disagree):

    - ``reduction="mean"`` (default): the base is the *mean* gradient, as the
      paper, its code, LibMTL and TorchJD; in the first case the weights sum to
      :math:`(1 + r/\|g_w\|)/(\text{rescale factor})`.
      ``reduction="sum"`` multiplies every weight by T, as nash-mtl's
      ``overwrite_grad`` ("to match the sum loss").
    - ``rescale``: the paper's code, LibMTL and nash-mtl default to 1; TorchJD
      does not rescale (``rescale=0``). TorchJD's value for
      ``J = [[-4, 1, 1], [6, 1, 1]]``, ``c = 0.5``, direction
      ``[0.1835, 1.2041, 1.2041]``, is ``rescale=0``.

    Args:
      c: the radius of the ball, relative to :math:`\|g_0\|` (non-negative).
      rescale: 0, 1 or 2, see above.
      reduction: ``"mean"`` or ``"sum"``, see above.
      norm_eps: :math:`\|g_w\|` (trace-normalised) below which the second case
        (the dual-cone projection) is taken.
      max_iter: bound on the inner solver's iterations.
      tol: relative duality gap at which the inner solver stops and below
        which ``state.solver.converged`` is True.

    Returns:
      A :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN`` and state
      :class:`mtopt.SolverState` (it knows T, checked at every step, and holds
      the last solve's certificate); the weights do not depend on it.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import cagrad
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> method = cagrad(c=0.5, rescale=0)
      >>> w, state = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w @ jac]
      [0.1835, 1.2041, 1.2041]
      >>> bool(state.solver.converged)
      True

      0 in the convex hull and c >= 1: the optimum is non-conflicting.

      >>> jac = jnp.array([[1.0], [-2.0]])
      >>> method = cagrad(c=2.0)
      >>> w, state = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> d = w @ jac
      >>> [round(float(x), 4) + 0.0 for x in d], [round(float(x), 4) + 0.0 for x in jac @ d]
      ([0.0], [0.0, 0.0])
    """
    opts = _options(c, rescale, reduction, norm_eps, max_iter, tol)
    return rule.as_method(
        lambda g, losses, preference, key: cagrad_weights(g, **opts),
        name="cagrad", solver=True,
    )


@jax.jit
def _solve(
    g: Array, c: Array, norm_eps: Array, max_iter: Array, tol: Array
) -> tuple[Array, base.SolverInfo]:
    """CAGrad's weights (before the rescale and reduction) on a trace-normalised Gramian.

    Jitted as a whole, with every option traced: one compilation per shape and dtype
    whatever ``c``, also for eager calls.
    """
    num_tasks = g.shape[0]
    dtype = g.dtype
    b = jnp.full((num_tasks,), 1.0 / num_tasks, dtype)
    gb = g @ b
    g0_norm = jnp.sqrt(jnp.maximum(b @ gb, 0.0))
    radius = c * g0_norm
    # The size of every term of P and D: |<g_i, d>| <= max_i ||g_i|| (1 + c) ||g0||.
    scale = (1.0 + c) * g0_norm * jnp.sqrt(jnp.max(jnp.diagonal(g)))
    scale = jnp.maximum(scale, jnp.finfo(dtype).tiny)
    # The min-norm point of the hull solves the dual exactly when 0 is in the hull and
    # c >= 1 (then g_w = 0 is optimal): a second dual candidate, solved exactly.
    w_mn, mn_info = min_norm.min_norm_simplex_with_info(g)
    mn_dual = _dual(g, gb, radius, w_mn)
    w_fo, iterations = _inner_problem(g, radius, scale, c, max_iter, tol, mn_dual)
    fo_dual = _dual(g, gb, radius, w_fo)
    w_star = jnp.where(mn_dual.value <= fo_dual.value, w_mn, w_fo)
    iterations = iterations + mn_info.iterations
    gw_norm = jnp.sqrt(jnp.maximum(w_star @ g @ w_star, 0.0))
    keep = gw_norm >= norm_eps
    normal = b + jnp.where(keep, radius / jnp.where(keep, gw_norm, 1.0), 0.0) * w_star
    # For c >= 1, d = 0 is feasible with value 0: a conflicting d(w) is not optimal.
    degenerate = ~keep | ((c >= 1.0) & (jnp.min(g @ normal) < 0.0))

    def projection(_):
        # A tight tolerance: the projection's own error shows in J d >= 0.
        qp_tol = 1e-10 if dtype == jnp.float64 else 1e-6
        v, qp = nonneg_qp.project_to_dual_cone(g, b, tol=qp_tol)
        # Back onto the ball along the segment from g0 if rounding put it outside.
        offset = v - b
        dist = jnp.sqrt(jnp.maximum(offset @ g @ offset, 0.0))
        theta = jnp.where(dist > radius, radius / jnp.where(dist > 0, dist, 1.0), 1.0)
        projected = (b + theta * offset).astype(dtype)
        # A small but non-zero optimal g_w (below norm_eps) still gives the exact solution
        # d(w): keep it when its value beats the projection's beyond rounding.
        recovered = _recovered(g, radius, w_star)
        p_rec, p_proj = _primal(g, recovered), _primal(g, projected)
        better = p_rec.value - p_rec.rounding > p_proj.value + p_proj.rounding
        return jnp.where(better, recovered, projected), qp.iterations.astype(jnp.int32)

    def no_projection(_):
        return normal, jnp.zeros((), jnp.int32)

    raw, qp_iterations = jax.lax.cond(degenerate, projection, no_projection, None)
    residual = _residual(_smaller(mn_dual, fo_dual), _primal(g, raw), scale)
    return raw, base.solver_info(iterations + qp_iterations, residual, tol)
