r"""ConFIG: conflict-free updates with equal cosine to every task gradient."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

from mtopt._src import base, gramian as gramian_lib, linalg, rule

__all__ = ["config", "config_weights"]


def config_weights(
    gramian: base.Array, *, preference: Optional[base.Array] = None
) -> tuple[base.Array, base.SolverInfo]:
    r"""The ConFIG rule on a Gramian: the weights of the least-norm direction whose
    cosines with the unit task gradients are proportional to ``preference``
    (default ones), given the length of the summed projections (Liu et al. 2024).

    The math and the conventions are those of :func:`mtopt.config`, whose
    ``update`` calls this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      preference: optional (T,) targets of the unit projections.

    Returns:
      ``(weights, solver_info)``; closed form (0 iterations, converged).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import config_weights
      >>> jac = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> w, _ = config_weights(jac @ jac.T)
      >>> [round(float(x), 4) for x in w @ jac]
      [0.3536, 0.8536]
    """
    gramian = rule.check_gramian(gramian, "config", (preference,))
    num_tasks = gramian.shape[0]
    dtype = gramian.dtype
    targets = base.optional_task_vector(
        preference, num_tasks, "config", default=1.0, dtype=dtype,
        meaning="one target per task",
    )
    finfo = jnp.finfo(dtype)
    gram, _ = rule.unit_diagonal_scale(gramian)
    norms = gramian_lib.task_norms(gram)
    nonzero = norms > 0
    inv_norms = jnp.where(nonzero, 1.0 / jnp.where(nonzero, norms, 1.0), 0.0)
    cosines = jnp.clip(gram * inv_norms[:, None] * inv_norms[None, :], -1.0, 1.0)
    cosines = 0.5 * (cosines + cosines.T)
    unit_coeffs = linalg.pinv_solve(cosines, targets)
    coeffs = unit_coeffs * inv_norms
    # Double-float sums: the length and norm do not depend on the task order.
    gram_coeffs = linalg.accurate_matvec(gram, coeffs)
    sq_norm = linalg.compensated_sum(coeffs * gram_coeffs)
    length = linalg.compensated_sum(gram_coeffs)
    usable = sq_norm > finfo.eps * jnp.maximum(jnp.sum(jnp.abs(unit_coeffs)), 1.0)
    factor = jnp.where(usable, length / jnp.where(usable, sq_norm, 1.0), 0.0)
    return factor * coeffs, base.exact_solver_info()


def config() -> base.Weighting:
    r"""ConFIG: the direction with (equal) positive cosine to every task gradient.

    With unit gradients :math:`u_i = g_i / \|g_i\|` stacked in :math:`U` (T x P),
    ConFIG takes the least-norm direction whose projections on the unit
    gradients equal the targets :math:`p` (all ones by default), normalises it,
    and gives it the length of the summed projections of the raw gradients:

    .. math::

        b = U^+ p,\qquad \hat b = b / \|b\|,\qquad
        d = \Big(\sum_i \langle g_i, \hat b\rangle\Big)\, \hat b .

    **From the Gramian.** :math:`U^+ = U^\top (U U^\top)^+` and
    :math:`U U^\top = C` is the cosine matrix :math:`C_{ij} = G_{ij} /
    (\|g_i\|\|g_j\|)`, so with :math:`a = C^+ p` and :math:`\beta_i = a_i /
    \|g_i\|`, :math:`b = \sum_i \beta_i g_i` and

    .. math::

        w = \frac{\mathbf 1^\top G \beta}{\beta^\top G \beta}\,\beta,
        \qquad d = \sum_i w_i g_i ,

    computed on the T x T system only (pseudo-inverse by eigendecomposition,
    eigenvalues below :math:`T\,\varepsilon_{\text{mach}}` of the largest
    dropped).

    Properties: when the unit gradients are linearly independent, :math:`C a =
    p` holds exactly, so :math:`\langle d, u_i\rangle \propto p_i`: with the
    default targets every task gradient has the **same cosine** with
    :math:`d`, and :math:`J d \ge 0` (no conflict; positive targets). With
    linearly dependent gradients (T > rank) the targets are met in the
    least-squares sense only and these properties may fail. Whatever the rank,
    the direction is **linear under scaling**: for :math:`c > 0` the rows of
    :math:`\mathrm{diag}(c) J` have the same unit vectors, so :math:`C`,
    :math:`\hat b` and the pseudo-inverse's cutoff are unchanged and
    :math:`d = (\sum_i c_i \langle g_i, \hat b\rangle)\, \hat b` is linear in
    :math:`c` (tested in float32 and float64 by the registry's property tests).

    Conventions pinned:

    - The weights multiply the raw gradients; they do not sum to a constant
      (the length rule fixes the size of :math:`d`). Scaling every gradient
      by the same factor leaves the weights unchanged (the direction scales).
    - A zero gradient has a zero unit vector (the official code and TorchJD
      use ``nan_to_num``): it gets weight 0. All gradients zero, or no usable
      direction, gives zero weights.
    - ``preference`` (optional, (T,)) replaces the all-ones targets
      :math:`p` (TorchJD's ``pref_vector``); the length is still the plain
      sum of the projections.
    - Only the single-step ConFIG is provided (not the momentum variant
      M-ConFIG of the paper).

    Float32 (``python benchmarks/float32_accuracy.py``, TorchJD's test matrices):
    the pseudo-inverse is applied through a refined eigendecomposition and
    double-float products, so a
    permutation of the tasks moves the direction by at most 4.3e-6 (TorchJD's
    float32 tolerance: 1e-4); the float32 direction is within 1.2e-5
    :math:`\max_i \|g_i\|` of the float64 one. With dependent gradients an
    eigenvalue of the cosine matrix near the cutoff can fall on either side
    under float32 rounding (then linearity under scaling holds in float64 only).

    Reference: Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR 2025.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import config
      >>> jac = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> method = config()
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> d = w @ jac
      >>> [round(float(x), 4) for x in d]
      [0.3536, 0.8536]
      >>> [round(float(x), 4) for x in jac @ d / jnp.linalg.norm(jac, axis=1)]  # equal
      [0.3536, 0.3536]
    """

    return rule.as_method(
        lambda g, losses, preference, key: config_weights(g, preference=preference),
        name="config", solver=False, preference="optional",
    )
