r"""Pareto multi-task learning (Pareto MTL): one solution per preference sub-region.

A set of K preference vectors splits the loss space into K cones; Pareto MTL
trains one model per cone, first reaching the cone (warm-up), then running a
constrained MGDA step that stays inside it. Every direction is a combination
of the task gradients, so both phases are weights computed from the Gramian.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, options
from mtopt._src.methods.scalarization import check_preference
from mtopt._src.min_norm import min_norm_simplex_with_info

Array = jax.Array


class PMTLState(NamedTuple):
    """State of :func:`pmtl`.

    Attributes:
      step: number of ``update`` calls so far (int32 scalar).
      warmed_up: True once the warm-up phase has ended (the sub-region was
        reached, or ``warmup_steps`` steps ran); it never goes back.
      solver: the :class:`mtopt.SolverInfo` of the last step's two min-norm
        solves (warm-up and main-phase QPs, both computed every step), merged
        with the worst of each field: the largest iteration
        count and certificate, converged only if both are.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> state = mtopt.pmtl(jnp.array([[0.5, 0.5]]), index=0).init(2)
      >>> int(state.step), bool(state.warmed_up), bool(state.solver.converged)
      (0, False, True)
    """

    step: Array
    warmed_up: Array
    solver: base.SolverInfo


def _unit_rows(m: Array) -> Array:
    norms = jnp.sqrt(jnp.sum(m * m, axis=-1, keepdims=True))
    return m / jnp.where(norms > 0, norms, 1.0)


def active_constraints(losses: Array, preferences: Array, target: Array) -> tuple[Array, Array]:
    r"""The sub-region constraints of Pareto MTL and which of them are violated.

    With unit rays ``u_j = p_j / ||p_j||`` and ``u = r / ||r||``:

    .. math::
        W_j = u_j - u, \qquad
        \mathcal{G}_j(L) = W_j^\top \frac{L}{\|L\|}, \qquad
        \text{active} = \{j : \mathcal{G}_j(L) > 16 \epsilon\}.

    ``L`` lies in the sub-region of ``r`` (its angle to ``u`` is the smallest)
    when no constraint is active. The reference tests ``> 0``; the margin of 16
    machine epsilons (``ε``) keeps the target's own row, zero up to rounding,
    from counting as violated (its zero gradient would stall the warm-up).

    Args:
      losses: (T,) task losses.
      preferences: (K, T) preference vectors.
      target: (T,) the preference whose sub-region is wanted.

    Returns:
      ``(W, active)``: (K, T) constraint directions and (K,) bools.
    """
    dtype = base.compute_dtype(losses, preferences, target)
    w = _unit_rows(preferences.astype(dtype)) - _unit_rows(target.astype(dtype))[None, :]
    losses = losses.astype(dtype)
    norm = jnp.sqrt(jnp.sum(losses * losses))
    scaled = losses / jnp.where(norm > 0, norm, 1.0)
    # Everything is unit-scale; the margin keeps the target's own row (and rows equal
    # to it), zero up to rounding, from counting as violated.
    return w, (w @ scaled) > 16 * jnp.finfo(dtype).eps


def pmtl(
    preferences: Array,
    index: Optional[int] = None,
    *,
    warmup_steps: int = 20,
    max_iter: int = 1000,
    tol: float = 1e-7,
) -> base.Weighting:
    r"""Pareto MTL: reach a preference's sub-region, then constrained MGDA in it.

    ``preferences`` (K, T) define K rays ``u_j = p_j / ||p_j||``. The target
    ``r`` is ``preferences[index]``, or the ``preference=`` passed to
    ``update`` when ``index`` is None (so ``jax.vmap`` over targets works). Its
    sub-region is ``{L : u_j^T L <= u^T L for all j}``, ``u = r / ||r||``;
    constraint ``j`` is ``G_j(θ) = (u_j - u)^T L(θ) <= 0`` with gradient
    ``(u_j - u)^T J``, and is *active* when ``G_j(L / ||L||) > 0``
    (:func:`active_constraints`). With ``W_A`` the active rows:

    *Warm-up* (at most ``warmup_steps`` steps, ended early as soon as no
    constraint is active): descend on the active constraints only,

    .. math::
        \beta = \arg\min_{\beta \in \Delta} \|\beta^\top W_A J\|^2, \qquad
        w = W_A^\top \beta .

    *Main phase*: MGDA over the task gradients and the active constraint
    gradients,

    .. math::
        \beta = \arg\min_{\beta \in \Delta}
            \Big\|\beta^\top \begin{bmatrix} I \\ W_A \end{bmatrix} J\Big\|^2,
        \qquad
        w = \frac{T\, v}{\sum_i |v_i|}, \quad
        v = \begin{bmatrix} I \\ W_A \end{bmatrix}^\top \beta .

    Both QPs use only the Gramian: ``M G M^T`` with ``M`` the stacked rows.
    They are solved by the shared min-norm solver
    :func:`mtopt.rules.min_norm_simplex` (Jacobi scaling, bounded first-order
    iterations ``max_iter``, then Wolfe's exact active-set method; its
    certificate, the relative Frank-Wolfe duality gap, stops the iterations at
    ``tol``). Constraint gradients are differences of task gradients and can
    be orders of magnitude shorter than them; the scaling makes these
    ill-conditioned sub-problems as accurate as well-conditioned ones. Both
    solves' diagnostics are in ``state.solver``. Inactive constraints are
    replaced by copies of an active vector (a task gradient in the main
    phase), which leaves the convex hull, hence the min-norm direction,
    unchanged and keeps the shapes static.

    Reference: Lin, Zhen, Li, Zhang, Kwong, "Pareto Multi-Task Learning",
    NeurIPS 2019 (official code ``Xi-L/ParetoMTL``).

    Conventions pinned:
      - Rays are normalised to unit length as in the official synthetic
        example (its multiMNIST trainer uses unit-circle vectors directly);
        the sub-regions are therefore angular. Rows of ``preferences`` must
        be on the simplex (divide unit-circle vectors by their sum).
      - Main-phase weights are rescaled to ``sum_i |w_i| = T``, as in the
        official multiMNIST trainer (``normalize_coeff = n_tasks /
        sum|w|``); warm-up weights are not rescaled (as in the reference).
        Main-phase weights can be negative (constraint gradients are
        differences of task gradients). With no active constraint the main
        phase is plain MGDA.
      - Warm-up switch: the reference warms up for at most 2 epochs (multiMNIST)
        or 20% of the iterations (synthetic example, LibMOON ``n_epoch // 5``),
        stopping early at the first feasible batch, which it skips. Here the
        warm-up lasts at most ``warmup_steps`` calls (default 20, the synthetic
        example's 20% of 100) and the step that finds the point feasible
        already takes the main-phase direction (no skipped step).
      - ``T = 1`` gives ``[1]``.

    Args:
      preferences: (K, T) preference vectors, each on the simplex.
      index: which row is the target; None to pass ``preference=`` instead.
      warmup_steps: maximum number of warm-up steps (``>= 0``).
      max_iter: bound on the min-norm solver's first-order iterations.
      tol: the min-norm solver's certificate tolerance (relative duality gap).

    Returns:
      A :class:`mtopt.Weighting` that needs the Gramian, with
      state :class:`PMTLState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pmtl
      >>> prefs = jnp.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
      >>> method = pmtl(prefs, index=1, warmup_steps=10)
      >>> state = method.init(2)
      >>> jac = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> w, state = method.update(state, jnp.array([3.0, 1.0]), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w]  # warm-up: u_1 - u, pushes L_1 down, L_2 up
      [0.2868, -0.5967]
      >>> int(state.step), bool(state.warmed_up)
      (1, False)
    """
    prefs = jnp.asarray(preferences)
    if prefs.ndim != 2 or prefs.shape[0] < 1 or prefs.shape[1] < 1:
        raise ValueError(
            f"pmtl: preferences must be a (K, T) array of K preference vectors, got shape "
            f"{prefs.shape}."
        )
    num_prefs, expected_tasks = prefs.shape
    for k in range(num_prefs):
        check_preference(prefs[k], expected_tasks, f"pmtl (preferences[{k}])")
    index = options.optional_integer(index, "index", "pmtl", minimum=0)
    if index is not None and not index < num_prefs:
        raise ValueError(
            f"pmtl: index must be in [0, {num_prefs}) for {num_prefs} preferences, got {index}."
        )
    warmup_steps = options.integer(warmup_steps, "warmup_steps", "pmtl", minimum=0)
    max_iter = options.integer(max_iter, "max_iter", "pmtl")
    tol = options.real(tol, "tol", "pmtl", nonnegative=True)

    def init(num_tasks: int, params=None) -> PMTLState:
        del params
        base.check_num_tasks(num_tasks)
        if num_tasks != expected_tasks:
            raise ValueError(
                f"pmtl: the preferences have {expected_tasks} entries (shape {prefs.shape}) "
                f"but init got num_tasks={num_tasks}."
            )
        return PMTLState(
            step=jnp.zeros((), jnp.int32),
            warmed_up=jnp.zeros((), bool),
            solver=base.exact_solver_info(),
        )

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        if num_tasks != expected_tasks:
            raise ValueError(
                f"pmtl: the preferences have shape {prefs.shape} ({expected_tasks} tasks) but "
                f"the step received {num_tasks} task losses."
            )
        base.check_state(state, num_tasks, "pmtl", PMTLState)
        gramian = base.check_gramian(gramian, num_tasks, "pmtl")
        if index is None:
            target = check_preference(preference, num_tasks, "pmtl")
        else:
            if preference is not None:
                raise ValueError(
                    f"pmtl was built with index={index}; do not also pass preference= "
                    "(build it with index=None to pass the target at each step)."
                )
            target = check_preference(prefs[index], num_tasks, "pmtl")
        dtype = base.compute_dtype(losses, gramian, prefs)
        losses = jax.lax.stop_gradient(losses).astype(dtype)
        g = jax.lax.stop_gradient(gramian).astype(dtype)
        new_step = state.step + 1
        if num_tasks == 1:
            return jnp.ones((1,), dtype), PMTLState(
                new_step, jnp.ones((), bool), base.exact_solver_info()
            )

        w, active = active_constraints(losses, prefs.astype(dtype), target)
        any_active = jnp.any(active)
        in_warmup = ~state.warmed_up & (state.step < warmup_steps) & any_active

        # Warm-up: min-norm over the active constraint gradients only; inactive
        # rows become copies of the first active one.
        first_active = w[jnp.argmax(active)]
        w_warm = jnp.where(active[:, None], w, first_active[None, :])
        beta, warm_info = min_norm_simplex_with_info(
            w_warm @ g @ w_warm.T, max_iter=max_iter, tol=tol
        )
        warm_weights = w_warm.T @ beta

        # Main phase: min-norm over task gradients and active constraint
        # gradients; inactive rows become copies of task 1's gradient.
        e_first = jnp.zeros((num_tasks,), dtype).at[0].set(1.0)
        stacked = jnp.concatenate(
            [jnp.eye(num_tasks, dtype=dtype), jnp.where(active[:, None], w, e_first[None, :])]
        )
        beta, main_info = min_norm_simplex_with_info(
            stacked @ g @ stacked.T, max_iter=max_iter, tol=tol
        )
        v = stacked.T @ beta
        total = jnp.sum(jnp.abs(v))
        main_weights = jnp.where(total > 0, num_tasks * v / jnp.where(total > 0, total, 1.0),
                                 jnp.full((num_tasks,), 1.0, dtype))

        weights = jnp.where(in_warmup, warm_weights, main_weights)
        infos = jax.tree.map(lambda *x: jnp.stack(x), warm_info, main_info)
        new_state = PMTLState(
            step=new_step,
            warmed_up=state.warmed_up | ~in_warmup,
            solver=base.merge_solver_infos(infos),
        )
        return weights, new_state

    return base.Weighting(
        init=init, update=update, needs=base.Needs.GRAMIAN, name="pmtl",
        preference="required" if index is None else "none", positional=True,
        stateful=True,  # the warm-up phase, once over, never comes back
    )
