"""DualProj: the mean gradient projected onto the dual cone (GEM's projection; TorchJD)."""

from __future__ import annotations

import jax

from mtopt._src import base, nonneg_qp

Array = jax.Array


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
    non-negative quadratic program, solved by
    :func:`mtopt._src.nonneg_qp.project_to_dual_cone` (accelerated projected
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
    ridge). Weights multiply the raw gradients and sum to at least 1.

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

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key
        scaled, pref = nonneg_qp.prepare_dual_cone_problem(
            gramian, losses, preference, norm_eps, reg_eps, "dualproj"
        )
        weights, _ = nonneg_qp.solve_scaled(scaled, pref, max_iter=max_iter, tol=tol)
        return weights, state

    return base.Weighting(
        init=base.init_empty_state, update=update, needs=base.Needs.GRAMIAN, name="dualproj"
    )
