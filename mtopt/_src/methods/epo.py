r"""Exact Pareto Optimal (EPO) search: descend onto the preference ray.

EPO steers training to the Pareto-optimal point whose weighted losses are
equal, ``r_1 L_1 = ... = r_T L_T`` (losses proportional to ``1 / r``). Each
step solves a small linear program over the simplex of task weights; the
reference solves it with cvxpy/GLPK on the host, here a dense two-phase
simplex method runs inside ``lax.while_loop``.
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base, options, rule
from mtopt._src.methods.scalarization import check_preference, nan_unless_valid

#: LibMOON's ``adjustments`` clips ``T * l_hat`` at this value inside the log.
LIBMOON_LOG_CLIP = 1e-3
#: The values of ``epo(convention=...)``.
CONVENTIONS = ("paper", "libmoon")

Array = jax.Array


class SimplexLPResult(NamedTuple):
    """What :func:`solve_simplex_lp` returns.

    Attributes:
      x: (T,) the solution, on the simplex.
      feasible: phase 1 found a feasible point (within the tolerance).
      iterations: pivots made in both phases.
    """

    x: Array
    feasible: Array
    iterations: Array


def _pivot(tab: Array, row: Array, col: Array) -> Array:
    """Gauss-Jordan pivot of the tableau on ``tab[row, col]``."""
    pivot_row = tab[row] / tab[row, col]
    factors = tab[:, col].at[row].set(0.0)
    tab = tab - factors[:, None] * pivot_row[None, :]
    tab = tab.at[row].set(pivot_row)
    # Keep the basic values non-negative despite rounding in near-ties.
    return tab.at[:, -1].set(jnp.maximum(tab[:, -1], 0.0))


@functools.partial(jax.jit, static_argnames=("max_iter", "tol"))
def _two_phase_simplex(tab, basis, phase1_cost, phase2_cost, artificial, *, max_iter, tol):
    """Two-phase primal simplex in one ``lax.while_loop`` (jitted: eager calls compile once).

    Phase 1 maximises ``phase1_cost @ z`` (minus the sum of the artificials) over
    ``{tab[:, :-1] z = tab[:, -1], z >= 0}`` from the feasible basis ``basis``;
    phase 2 then maximises ``phase2_cost @ z`` from where phase 1 ended. Bland's
    rule (the smallest improving column enters; among the minimum-ratio rows the
    smallest basic index leaves), so it cannot cycle. Artificial columns never
    enter; in phase 2 an artificial still basic at level 0 leaves as soon as the
    entering column touches its row, which keeps it at 0. Each phase stops after
    ``max_iter`` pivots.

    Returns the final tableau and basis, the phase-1 infeasibility (the sum of
    the artificials when phase 1 ended) and the number of pivots.
    """
    num_cols = tab.shape[1] - 1
    big_index = jnp.iinfo(jnp.int32).max
    can_enter = ~artificial

    def choose(tab, basis, phase2):
        cost = jnp.where(phase2, phase2_cost, phase1_cost)
        reduced = cost - cost[basis] @ tab[:, :num_cols]
        improving = can_enter & (reduced > tol)
        col = jnp.argmax(improving).astype(jnp.int32)
        column = tab[:, col]
        rhs = tab[:, -1]
        positive = column > tol
        ratio = jnp.where(positive, rhs / jnp.where(positive, column, 1.0), jnp.inf)
        stuck = phase2 & artificial[basis] & (jnp.abs(column) > tol)
        ratio = jnp.where(stuck, 0.0, ratio)
        eligible = jnp.isfinite(ratio)
        best = jnp.min(ratio)
        ties = eligible & (ratio <= best + tol)
        row = jnp.argmin(jnp.where(ties, basis, big_index)).astype(jnp.int32)
        return col, row, jnp.any(improving) & jnp.any(eligible)

    def body(carry):
        it, pivots, tab, basis, phase2, done, infeasibility = carry
        col, row, move = choose(tab, basis, phase2)
        tab = jnp.where(move, _pivot(tab, row, col), tab)
        basis = jnp.where(move, basis.at[row].set(col), basis)
        it = it + move.astype(jnp.int32)
        end_phase = ~move | (it >= max_iter)
        switch = end_phase & ~phase2
        artificial_sum = jnp.sum(jnp.where(artificial[basis], tab[:, -1], 0.0))
        infeasibility = jnp.where(switch, artificial_sum, infeasibility)
        done = end_phase & phase2
        phase2 = phase2 | switch
        pivots = pivots + move.astype(jnp.int32)
        return jnp.where(switch, 0, it), pivots, tab, basis, phase2, done, infeasibility

    zero = jnp.zeros((), jnp.int32)
    init = (zero, zero, tab, basis, jnp.zeros((), bool), jnp.zeros((), bool),
            jnp.zeros((), tab.dtype))
    _, pivots, tab, basis, _, _, infeasibility = jax.lax.while_loop(
        lambda carry: ~carry[5], body, init
    )
    return tab, basis, infeasibility, pivots


def solve_simplex_lp(
    objective: Array,
    lhs: Array,
    rhs: Array,
    active: Array,
    *,
    slack: jax.typing.ArrayLike = 0.0,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> SimplexLPResult:
    r"""Solve a small LP over the probability simplex, exactly, in JAX.

    .. math::
        \max_{x \in \Delta_T} c^\top x \quad \text{s.t.} \quad
        A_j x \ge b_j \ \text{for every row } j \text{ with } \mathrm{active}_j .

    Dense two-phase primal simplex with Bland's rule in ``lax.while_loop``
    (at most ``max_iter`` pivots per phase). Rows become ``A_j x - s_j = b_j``
    with surplus ``s_j >= 0``; a row with ``b_j <= 0`` starts with ``s_j``
    basic, and only rows with ``b_j > 0`` and the simplex row ``sum x = 1``
    get an artificial variable. Phase 1 minimises the artificials; if they
    cannot be driven below ``100 * tol`` the LP is reported infeasible.
    Phase 2 then maximises ``c^T x`` with artificials held at 0. Every
    phase-2 iterate is a feasible vertex, so stopping at ``max_iter`` returns
    a feasible, possibly sub-optimal, vertex. Inputs should be O(1) (scale
    them first); ``tol`` is absolute.

    Args:
      objective: (T,) ``c``.
      lhs: (R, T) ``A``.
      rhs: (R,) ``b``.
      active: (R,) bool; inactive rows are ignored.
      slack: solve with the relaxed constraints ``A_j x >= b_j - slack``.
      max_iter: bound on the pivots of each phase.
      tol: pivot / reduced-cost tolerance.

    Returns:
      A :class:`SimplexLPResult`; ``x`` is on the simplex even when the LP is
      infeasible, but then means nothing: callers should replace it.
    """
    if objective.ndim != 1 or lhs.ndim != 2 or lhs.shape[1] != objective.shape[0]:
        raise ValueError(
            f"solve_simplex_lp: expected objective (T,) and lhs (R, T), got shapes "
            f"{objective.shape} and {lhs.shape}."
        )
    if rhs.shape != lhs.shape[:1] or active.shape != lhs.shape[:1]:
        raise ValueError(
            f"solve_simplex_lp: expected rhs and active of shape ({lhs.shape[0]},), got "
            f"{rhs.shape} and {active.shape}."
        )
    num_vars = objective.shape[0]
    num_ineq = rhs.shape[0]
    dtype = objective.dtype
    lhs = jnp.where(active[:, None], lhs, 0.0)
    rhs = jnp.where(active, rhs - slack, -1.0)
    flip = rhs <= 0  # surplus basic: -A x + s = -b >= 0
    sign = jnp.where(flip, -1.0, 1.0).astype(dtype)
    eye = jnp.eye(num_ineq, dtype=dtype)
    # Columns: x (T) | s (R) | artificials (R + 1) | rhs.
    ineq_rows = jnp.concatenate(
        [
            sign[:, None] * lhs,
            -sign[:, None] * eye,
            jnp.where(flip[:, None], 0.0, eye),
            jnp.zeros((num_ineq, 1), dtype),
            (sign * rhs)[:, None],
        ],
        axis=1,
    )
    sum_row = jnp.concatenate(
        [
            jnp.ones((1, num_vars), dtype),
            jnp.zeros((1, 2 * num_ineq), dtype),
            jnp.ones((1, 2), dtype),
        ],
        axis=1,
    )
    tab = jnp.concatenate([ineq_rows, sum_row], axis=0)
    num_cols = num_vars + 2 * num_ineq + 1
    first_artificial = num_vars + num_ineq
    row_ids = jnp.arange(num_ineq, dtype=jnp.int32)
    basis = jnp.concatenate(
        [
            jnp.where(flip, num_vars + row_ids, first_artificial + row_ids),
            jnp.array([num_cols - 1], jnp.int32),
        ]
    )
    artificial = jnp.arange(num_cols) >= first_artificial

    phase1_cost = jnp.where(artificial, -1.0, 0.0).astype(dtype)
    phase2_cost = jnp.concatenate([objective, jnp.zeros((num_cols - num_vars,), dtype)])
    tab2, basis2, infeasibility, pivots = _two_phase_simplex(
        tab, basis, phase1_cost, phase2_cost, artificial, max_iter=max_iter, tol=tol
    )
    feasible = infeasibility <= 100.0 * tol
    values = jnp.zeros((num_cols,), dtype).at[basis2].set(tab2[:, -1])
    x = jnp.maximum(values[:num_vars], 0.0)
    total = jnp.sum(x)
    uniform = jnp.full((num_vars,), 1.0 / num_vars, dtype)
    x = jnp.where(total > 0, x / jnp.where(total > 0, total, 1.0), uniform)
    return SimplexLPResult(x=x, feasible=feasible, iterations=pivots)


class EPOStep(NamedTuple):
    """Internals of one EPO step (for inspection and tests).

    Attributes:
      alpha: (T,) LP solution on the simplex (after the fallback).
      balance: True in balance mode (``mu > eps``), False in descent mode.
      feasible: the LP was feasible; when False, ``alpha = r``.
      non_uniformity: ``mu(r ⊙ L)``.
      objective, lhs, rhs, active: the LP that was solved, on the normalised
        Gramian (see :func:`solve_simplex_lp`).
      slack: 0, or the relaxation used when the exact LP looked infeasible.
      iterations: simplex pivots of the LP solve (the larger of the exact and
        the relaxed LP, solved in one batched loop).
    """

    alpha: Array
    balance: Array
    feasible: Array
    non_uniformity: Array
    objective: Array
    lhs: Array
    rhs: Array
    active: Array
    slack: Array
    iterations: Array


def epo_step(
    losses: Array,
    gramian: Array,
    preference: Array,
    *,
    eps: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-6,
    log_clip: Optional[float] = None,
    fallback: Optional[Array] = None,
) -> EPOStep:
    """The EPO linear program for one step; see :func:`epo` for the math.

    ``losses``, ``gramian`` and ``preference`` (the LP's ``r``, used as given,
    at its own scale) must already be validated.

    Args:
      losses: (T,) task losses.
      gramian: (T, T) Gramian ``C``.
      preference: (T,) the ``r`` of the LP, positive.
      eps: non-uniformity threshold between balance and descent modes.
      max_iter: bound on the simplex pivots per LP phase.
      tol: tolerance of the LP solver.
      log_clip: ``None``: ``log(T l_hat)`` is floored at ``log(T * machine eps)``;
        a number ``c``: ``log(max(T l_hat, c))`` (LibMOON's ``adjustments``, c = 1e-3).
      fallback: the ``alpha`` used when the LP is infeasible or the Gramian is
        zero (default ``preference``, which must then be on the simplex).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.methods.epo import epo_step
      >>> step = epo_step(jnp.array([1.0, 1.0]), jnp.eye(2), jnp.array([0.8, 0.2]))
      >>> step.alpha.tolist(), bool(step.balance)   # r ⊙ L = (0.8, 0.2): reduce task 0
      ([1.0, 0.0], True)
    """
    num_tasks = losses.shape[0]
    dtype = base.compute_dtype(losses, gramian, preference)
    tiny = jnp.finfo(dtype).tiny
    machine_eps = jnp.finfo(dtype).eps
    losses = losses.astype(dtype)
    r = preference.astype(dtype)
    c, scale = rule.unit_diagonal_scale(gramian.astype(dtype))
    no_gradient = ~(scale > tiny)

    # Non-uniformity of the weighted losses and the balancing adjustment.
    weighted = r * jnp.maximum(losses, 0.0)
    total = jnp.sum(weighted)
    positive_total = total > tiny
    l_hat = jnp.where(positive_total, weighted / jnp.where(positive_total, total, 1.0),
                      1.0 / num_tasks)
    kept = l_hat > machine_eps
    # mu sums over l_hat > machine eps (both references), where this log is exact.
    log_ratio = jnp.log(jnp.maximum(l_hat, machine_eps) * num_tasks)
    mu = jnp.sum(jnp.where(kept, l_hat * log_ratio, 0.0))
    if log_clip is not None:  # LibMOON: log(clip(T l_hat, 1e-3)) in the adjustment only
        log_ratio = jnp.log(jnp.maximum(l_hat * num_tasks, jnp.asarray(log_clip, dtype)))
    adjust = r * (log_ratio - mu)
    c_adjust = c @ adjust
    balance = mu > eps

    # Balance LP: max alpha^T C a  s.t.  (C alpha)_j >= b_j.
    in_j = c_adjust > 0
    any_j = jnp.any(in_j)
    in_j_star = weighted == jnp.max(weighted)
    bal_rhs = jnp.where(any_j, jnp.where(in_j_star, 0.0, c_adjust), 0.0)
    bal_active = jnp.where(any_j, ~in_j | in_j_star, True)
    # Descent LP: max 1^T C alpha  s.t.  C alpha >= 0,  alpha^T C a >= min(max(C a), 0).
    dom_objective = jnp.sum(c, axis=0)

    objective = jnp.where(balance, c_adjust, dom_objective)
    obj_scale = jnp.max(jnp.abs(objective))
    objective = objective / jnp.where(obj_scale > tiny, obj_scale, 1.0)
    lhs = jnp.concatenate([c, c_adjust[None, :]], axis=0)
    extra_rhs = jnp.minimum(jnp.max(c_adjust), 0.0)
    rhs = jnp.concatenate([jnp.where(balance, bal_rhs, 0.0), extra_rhs[None]])
    active = jnp.concatenate(
        [jnp.where(balance, bal_active, True), jnp.logical_not(balance)[None]]
    )
    # A feasible set that is a single point in exact arithmetic (C alpha >= 0 at a
    # Pareto-stationary point, where C is singular) can vanish in rounding: the LP
    # is also solved with every constraint relaxed by 10 tol (both in one batched
    # loop), and the relaxed solution is used when the exact one is infeasible.
    slacks = jnp.array([0.0, 10.0 * tol], dtype)
    both = jax.vmap(
        lambda sl: solve_simplex_lp(objective, lhs, rhs, active, slack=sl, max_iter=max_iter,
                                    tol=tol)
    )(slacks)
    relaxed = ~both.feasible[0]
    result = jax.tree.map(lambda v: jnp.where(relaxed, v[1], v[0]), both)
    use_lp = result.feasible & ~no_gradient
    fallback = r if fallback is None else fallback.astype(dtype)
    alpha = jnp.where(use_lp, result.x, fallback)
    return EPOStep(
        alpha=alpha,
        balance=balance,
        feasible=result.feasible,
        non_uniformity=mu,
        objective=objective,
        lhs=lhs,
        rhs=rhs,
        active=active,
        slack=jnp.where(relaxed, 10.0 * tol, 0.0).astype(dtype),
        iterations=jnp.max(both.iterations),
    )


def _options(eps: float, max_iter: int, tol: float, convention: str) -> dict:
    return dict(
        eps=options.real(eps, "eps", "epo", nonnegative=True),
        max_iter=options.integer(max_iter, "max_iter", "epo"),
        tol=options.real(tol, "tol", "epo", positive=True),
        convention=options.choice(convention, "convention", "epo", CONVENTIONS),
    )


def epo_weights(
    gramian: Array,
    losses: Array,
    preference: Array,
    *,
    eps: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-6,
    convention: Literal["paper", "libmoon"] = "paper",
) -> tuple[Array, base.SolverInfo]:
    r"""The EPO rule on a Gramian: ``T`` times the solution :math:`\alpha` of the
    balance or descent LP of exact Pareto optimal search (Mahapatra & Rajan 2020).

    The LPs, the two readings of ``preference`` (``convention``) and the
    guards are those of :func:`mtopt.epo`, whose ``update`` calls this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      losses: (T,) task losses.
      preference: (T,) preference on the simplex.
      eps, max_iter, tol, convention: as in :func:`mtopt.epo`.

    Returns:
      ``(weights, solver_info)``: ``iterations`` counts the simplex pivots;
      ``converged`` is False when the LP (even relaxed by ``10 tol``) was
      infeasible and the fallback was used (``residual`` 1, else the
      relaxation used: 0 or ``10 tol``).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import epo_weights
      >>> w, info = epo_weights(jnp.eye(2), jnp.ones(2), jnp.array([0.8, 0.2]))
      >>> [float(x) for x in w], bool(info.converged)  # r ⊙ L = (0.8, 0.2)
      ([2.0, 0.0], True)
    """
    opts = _options(eps, max_iter, tol, convention)
    convention = opts["convention"]
    name = "epo" if convention == "paper" else "epo (convention='libmoon')"
    gramian = rule.check_gramian(gramian, name, (losses, preference))
    num_tasks = gramian.shape[0]
    losses = rule.check_losses(losses, num_tasks, name)
    pref = check_preference(preference, num_tasks, name)
    dtype = gramian.dtype
    pref = pref.astype(dtype)
    if convention == "libmoon":
        _check_positive_preference(preference, name)
        positive = jnp.all(pref > 0)
        r = jnp.where(positive, 1.0 / jnp.where(positive, pref, 1.0), jnp.nan)
        fallback, log_clip = pref, LIBMOON_LOG_CLIP
    else:
        r, fallback, log_clip = pref, None, None
    if num_tasks == 1:
        return nan_unless_valid(jnp.ones((1,), dtype), r), base.exact_solver_info()
    step = epo_step(
        jax.lax.stop_gradient(losses), jax.lax.stop_gradient(gramian), r,
        eps=opts["eps"], max_iter=opts["max_iter"], tol=opts["tol"], log_clip=log_clip,
        fallback=fallback,
    )
    weights = (num_tasks * step.alpha).astype(dtype)
    residual = jnp.where(step.feasible, step.slack, 1.0)
    info = base.SolverInfo(step.iterations.astype(jnp.int32), residual.astype(jnp.float32),
                           step.feasible)
    return nan_unless_valid(weights, r), info


def epo(
    *,
    eps: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-6,
    convention: Literal["paper", "libmoon"] = "paper",
) -> base.Weighting:
    r"""EPO search (Exact Pareto Optimal search) with a JAX linear-program solver.

    For losses ``L``, preference ``r`` and Gramian ``C = G = J J^T``:

    .. math::
        \hat l = \frac{r \odot L}{\sum_i r_i L_i}, \qquad
        \mu = \mathrm{KL}(\hat l \,\|\, \mathbf{1}/T)
            = \sum_i \hat l_i \log(T \hat l_i), \qquad
        a = r \odot (\log(T \hat l) - \mu).

    ``mu`` measures how far ``r ⊙ L`` is from uniform (0 exactly on the ray
    ``L ∝ 1/r``); ``a`` is the direction in loss space that balances it.

    *Balance mode* (``mu > eps``): with ``J = {j : (C a)_j > 0}`` and ``J^* =
    argmax_j r_j L_j``,

    .. math::
        \max_{\alpha \in \Delta_T} \alpha^\top C a \quad \text{s.t.} \quad
        (C\alpha)_j \ge (C a)_j \ (j \notin J), \quad
        (C\alpha)_j \ge 0 \ (j \in J^*),

    or ``C α >= 0`` for every ``j`` when ``J`` is empty. *Descent mode*
    (``mu <= eps``):

    .. math::
        \max_{\alpha \in \Delta_T} \mathbf{1}^\top C \alpha \quad \text{s.t.} \quad
        C\alpha \ge 0, \quad \alpha^\top C a \ge \min(\max_j (C a)_j, 0).

    The weights are ``w = T α``: the combined gradient ``sum_i w_i g_i``
    (``J^T α`` up to the factor T) moves the losses towards the ray while not
    increasing any loss that must not go up, then descends along it.

    Reference: Mahapatra & Rajan, "Multi-Task Learning with User Preferences:
    Gradient Descent with Controlled Ascent in Pareto Optimization", ICML
    2020 (official code ``dbmptr/EPOSearch``, ``epo_lp.py``).

    Solver (the deviation from the reference): the reference solves these LPs
    with cvxpy + GLPK on the host. Here the same LPs (same objective and
    constraints) are solved by :func:`solve_simplex_lp`, a dense two-phase
    simplex method with Bland's rule on the Gramian normalised by its largest
    diagonal entry (the LPs are invariant to that scaling), at most
    ``max_iter`` pivots per phase. Vertex solutions are exact up to ``tol``;
    when an LP has several optimal vertices the one found can differ from
    GLPK's. When phase 1 finds no feasible point, the LP is solved again with
    every constraint relaxed by ``10 * tol`` (GLPK also accepts constraints
    within a tolerance; this keeps feasible sets that are a single point in
    exact arithmetic, e.g. ``C α >= 0`` at a Pareto-stationary point). If it is
    still infeasible (possible for the descent LP's extra constraint) the
    reference's fallback is used: ``α = r``. Hitting
    ``max_iter`` in phase 2 returns a feasible, possibly sub-optimal vertex.

    How ``preference`` is read (``convention=``; the two references differ,
    and the balance LP's constraints :math:`(C\alpha)_j \ge (Ca)_j` scale with
    :math:`|r|` while its objective's argmax does not, so the *scale* of ``r``
    changes the step, not only its direction):

    - ``"paper"`` (default): ``preference`` is the paper's ``r``, on the
      simplex, used in the LP as given. EPO converges to ``r_i L_i`` equal
      across tasks, i.e. losses proportional to ``1 / r``. ``log(T l_hat)`` is
      floored at ``log(T · machine eps)``; the fallback is ``α = r``. The
      official code (``dbmptr/EPOSearch``, ``EPO_LP(m, n, r)``) also uses ``r``
      as given, but its experiments pass unit-L2-norm vectors
      (``circle_points``), not simplex vectors: same ray, other step sizes of
      the balance constraints.
    - ``"libmoon"``: ``preference`` is LibMOON's ``pref`` (on the simplex,
      every entry > 0) and the step is LibMOON's: its ``EPOCore`` builds
      ``EPO_LP(r=1/pref)``, so the LP uses the **unnormalised** ``r = 1 /
      pref``; its ``adjustments`` clip ``T l_hat`` at 1e-3 inside the log of
      ``a`` (``mu`` is unchanged); when the LP fails, ``solve_epo`` uses
      ``α = pref / sum(pref)``. Losses end proportional to ``pref``. LibMOON
      applies ``α`` itself (summing to 1); here the weights are ``T α`` in
      both conventions.

    The two conventions have the same ray (``r ∝ 1/pref``) but not the same
    steps: with ``G = [[1, -0.875], [-0.875, 6.25]]``, ``L = (1.3, 0.6)``,
    ``pref = (0.8, 0.2)``, LibMOON's LP (``r = (1.25, 5)``) gives ``α = (0,
    1)`` and the paper convention with the normalised ``preference = (1/p) /
    sum(1/p) = (0.2, 0.8)`` gives ``α = (0.344, 0.656)``.

    Conventions pinned:
      - Weights sum to T (the official trainers multiply ``α`` by
        ``n_tasks``); they multiply the raw task gradients and are
        non-negative.
      - ``eps = 1e-4`` (``EPO_LP`` default in the official code and in LibMOON).
      - Guards, where the reference raises or returns ``-inf``: negative
        losses are clipped to 0 (``mu`` is defined for non-negative ``r ⊙ L``);
        ``log(T l_hat)`` is floored as above (the official code takes ``log 0 =
        -inf``); all-zero weighted losses count as uniform (descent mode); a
        zero Gramian returns ``T`` times the fallback (no gradient
        information).
      - Preferences: known values are checked (on the simplex, as for every
        preference method; positive
        entries for ``"libmoon"``); an invalid traced preference gives NaN
        weights, so the step's ``nan_policy`` applies.
      - ``T = 1`` gives ``[1]``.

    Args:
      eps: non-uniformity threshold between balance and descent modes.
      max_iter: bound on the simplex pivots per LP phase.
      tol: tolerance of the LP solver (on the normalised problem).
      convention: how ``preference`` is read, ``"paper"`` or ``"libmoon"``
        (see above).

    Returns:
      A :class:`mtopt.Weighting` that needs the Gramian, whose state is a
      :class:`mtopt.SolverState` (the LP's pivots and feasibility, see
      :func:`mtopt.rules.epo_weights`); ``update`` requires ``gramian=`` and
      ``preference=``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import epo
      >>> method = epo()
      >>> jac = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> w, _ = method.update(method.init(2), jnp.array([1.0, 1.0]),
      ...                      gramian=jac @ jac.T, preference=jnp.array([0.8, 0.2]))
      >>> [float(x) for x in w]  # r ⊙ L = (0.8, 0.2): all weight on task 0
      [2.0, 0.0]

      LibMOON's reading of the same numbers: ``r = 1 / pref = (1.25, 5)``,
      ``r ⊙ L = (1.25, 5)``, so the weight goes to task 1:

      >>> method = epo(convention="libmoon")
      >>> w, _ = method.update(method.init(2), jnp.array([1.0, 1.0]),
      ...                      gramian=jac @ jac.T, preference=jnp.array([0.8, 0.2]))
      >>> [float(x) for x in w]
      [0.0, 2.0]
    """
    opts = _options(eps, max_iter, tol, convention)
    return rule.as_method(
        lambda g, losses, preference, key: epo_weights(g, losses, preference, **opts),
        name="epo", solver=True, preference="required",
    )


def _check_positive_preference(preference: Array, method: str) -> None:
    """LibMOON's ``r = 1 / pref`` needs every entry > 0 (checked when the values are known)."""
    try:
        values = np.asarray(preference, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if np.any(values <= 0):
        raise ValueError(
            f"{method}: every preference entry must be positive (the LP uses r = 1 / pref), "
            f"got {values}."
        )
