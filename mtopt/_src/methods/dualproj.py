"""DualProj: the mean gradient projected onto the dual cone (GEM's projection; TorchJD)."""

from __future__ import annotations

from typing import Optional

import jax

from mtopt._src import base, nonneg_qp, rule

Array = jax.Array


def dualproj_weights(
    gramian: Array,
    *,
    preference: Optional[Array] = None,
    norm_eps: float = 0.0,
    reg_eps: float = 0.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> tuple[Array, base.SolverInfo]:
    r"""The DualProj rule on a Gramian: :math:`w = \arg\min_{v \ge p} v^\top G v`.

    ``p`` is ``preference`` (default :math:`1/T`): :math:`J^\top w` is the
    projection of :math:`J^\top p` onto the dual cone of the task gradients
    (Lopez-Paz & Ranzato 2017, Eq. 11). The math, the options and the
    conventions are those of :func:`mtopt.dualproj`, whose ``update`` calls this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      preference: optional (T,) non-negative weights of the combination.
      norm_eps, reg_eps, max_iter, tol: as in :func:`mtopt.dualproj`.

    Returns:
      ``(weights, solver_info)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import dualproj_weights
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> w, info = dualproj_weights(jac @ jac.T)
      >>> [round(float(x), 4) for x in w]  # exact: (11/18, 1/2)
      [0.6111, 0.5]
    """
    norm_eps, reg_eps, max_iter, tol = nonneg_qp.check_solver_options(
        norm_eps, reg_eps, max_iter, tol, "dualproj"
    )
    gramian = rule.check_gramian(gramian, "dualproj", (preference,))
    scaled, pref = nonneg_qp.prepare_dual_cone_problem(
        gramian, preference, norm_eps, reg_eps, "dualproj"
    )
    weights, qp_info = nonneg_qp.solve_scaled(scaled, pref, max_iter=max_iter, tol=tol)
    return weights, base.solver_info(qp_info.iterations, qp_info.residual, tol)


def dualproj(
    *,
    norm_eps: float = 0.0,
    reg_eps: float = 0.0,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> base.Weighting:
    r"""DualProj: the mean task gradient projected onto the dual cone of the task gradients.

    .. math::
        d = \Pi\Big(\frac1T \sum_i g_i\Big) = J^\top w, \qquad
        w = \arg\min_{v \ge \mathbf{1}/T} v^\top G v ,

    where :math:`\Pi` is the Euclidean projection onto the dual cone
    :math:`\{d : \langle g_j, d\rangle \ge 0 \ \forall j\}` (the projection of
    Gradient Episodic Memory, Eq. 11, applied to the mean gradient). One
    non-negative quadratic program, solved by the dual-cone QP solver of
    :func:`mtopt.upgrad` (accelerated projected
    gradient with bounded iterations plus active-set refinement; ``max_iter``
    and ``tol`` are its bound and stopping tolerance).

    Properties (tested): non-conflicting, :math:`J d = G w \ge 0`; weights
    permutation equivariant and invariant to a common scale of the gradients;
    :math:`w \ge 1/T`, with equality when the mean gradient already conflicts
    with no task. Unlike UPGrad it is *not* linear under scaling of one task's
    gradient.

    References: Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual
    Learning", NeurIPS 2017; Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232, 2024 (TorchJD's
    ``DualProj``).

    Conventions pinned: as :func:`upgrad` (TorchJD's mean convention, optional
    ``preference=`` in ``update`` replacing :math:`1/T`, exact by default;
    ``norm_eps=1e-4, reg_eps=1e-4`` reproduce TorchJD's trace normalisation and
    ridge, whose bias on the weights is not 1e-4 but of order ``reg_eps`` over
    the smallest eigenvalue of ``G / tr G``: see :func:`upgrad`). Weights
    multiply the raw gradients and sum to at least 1.

    Float32 (``python benchmarks/float32_accuracy.py``, TorchJD's test matrices):
    a permutation of the tasks moves the direction by at most 7.5e-8 (TorchJD's
    float32 tolerance: 2e-7); distance to the float64 direction at most 1.2e-5
    :math:`\max_i \|g_i\|` on the normal matrices and 1.5e-3 where the exact
    direction nearly vanishes (see :func:`upgrad`).

    Args:
      norm_eps: trace of the Gramian below which it is treated as zero
        (TorchJD: 1e-4).
      reg_eps: ridge added to the trace-normalised Gramian (TorchJD: 1e-4).
      max_iter: bound on the solver's first-order iterations.
      tol: relative KKT residual at which the solver stops.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import dualproj
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> method = dualproj()
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w @ jac]  # exact: w = (11/18, 1/2)
      [0.5556, 1.1111, 1.1111]
      >>> torchjd = dualproj(norm_eps=1e-4, reg_eps=1e-4)  # TorchJD's defaults
      >>> w, _ = torchjd.update(torchjd.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w @ jac]
      [0.5563, 1.1109, 1.1109]
    """
    norm_eps, reg_eps, max_iter, tol = nonneg_qp.check_solver_options(
        norm_eps, reg_eps, max_iter, tol, "dualproj"
    )
    options = dict(norm_eps=norm_eps, reg_eps=reg_eps, max_iter=max_iter, tol=tol)
    return rule.as_method(
        lambda g, losses, preference, key: dualproj_weights(g, preference=preference, **options),
        name="dualproj", solver=True, preference="optional",
    )
