"""Aligned-MTL: independent component alignment of the task gradients (Senushkin et al. 2023)."""

from __future__ import annotations

from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base, options, rule

Array = jax.Array
ScaleMode = Literal["min", "median", "rmse"]
RankPrecision = Literal["float32", "input"]

# The references compute the rank tolerance with torch.finfo().eps, the eps of torch's *default*
# dtype (float32 unless torch.set_default_dtype changed it), whatever the Gramian's dtype.
_RANK_EPS = float(np.finfo(np.float32).eps)


def _options(scale_mode: str, rank_precision: str) -> dict:
    return dict(
        scale_mode=options.choice(scale_mode, "scale_mode", "aligned_mtl", ("min", "median", "rmse")),
        rank_precision=options.choice(
            rank_precision, "rank_precision", "aligned_mtl", ("float32", "input")
        ),
    )


def aligned_mtl_weights(
    gramian: Array,
    *,
    preference: Optional[Array] = None,
    scale_mode: ScaleMode = "min",
    rank_precision: RankPrecision = "float32",
) -> tuple[Array, base.SolverInfo]:
    r"""The Aligned-MTL rule on a Gramian: :math:`w = \sqrt{\lambda_s}\,
    V \Lambda^{-1/2} V^\top p` over the rank of :math:`G = V \Lambda V^\top`
    (Senushkin et al. 2023).

    ``p`` is ``preference`` (default ones). The math, the rank cutoff and the
    conventions are those of :func:`mtopt.aligned_mtl`, whose ``update`` calls
    this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      preference: optional (T,) weights of the aligned components.
      scale_mode, rank_precision: as in :func:`mtopt.aligned_mtl`.

    Returns:
      ``(weights, solver_info)``; closed form (0 iterations, converged).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt.rules import aligned_mtl_weights
      >>> w, _ = aligned_mtl_weights(jnp.diag(jnp.array([1.0, 9.0])))
      >>> [round(float(x), 4) for x in w]  # both aligned rows have norm 1
      [1.0, 0.3333]
    """
    opts = _options(scale_mode, rank_precision)
    g = rule.check_gramian(gramian, "aligned_mtl", (preference,))
    num_tasks = g.shape[0]
    dtype = g.dtype
    pref = base.optional_task_vector(
        preference, num_tasks, "aligned_mtl", default=1.0, dtype=dtype,
        meaning="one weight per task",
    )
    rank_eps = _RANK_EPS if opts["rank_precision"] == "float32" else float(jnp.finfo(dtype).eps)
    # Normalised before eigh so that gradients of 1e10 do not overflow (the
    # weights do not depend on the scale).
    g, scale = rule.unit_diagonal_scale(g)
    positive = scale > jnp.finfo(dtype).tiny
    eigenvalues, vectors = jnp.linalg.eigh(g)  # ascending
    lam_max = eigenvalues[-1]
    kept = (eigenvalues > lam_max * num_tasks * rank_eps) & positive
    rank = jnp.sum(kept.astype(jnp.int32))
    safe = jnp.where(kept, eigenvalues, 1.0)
    if opts["scale_mode"] == "min":
        lam_s = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
    elif opts["scale_mode"] == "rmse":
        lam_s = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(rank, 1).astype(dtype)
    else:
        # Lower median of the kept (largest `rank`) eigenvalues.
        index = num_tasks - rank + (rank - 1) // 2
        lam_s = eigenvalues[jnp.clip(index, 0, num_tasks - 1)]
    inv_sqrt = jnp.where(kept, jax.lax.rsqrt(safe), 0.0)
    coeffs = jnp.sqrt(jnp.where(rank > 0, lam_s, 1.0)) * inv_sqrt
    weights = vectors @ (coeffs * (vectors.T @ pref))
    return jnp.where(rank > 0, weights, pref), base.exact_solver_info()


def aligned_mtl(
    scale_mode: ScaleMode = "min", *, rank_precision: RankPrecision = "float32"
) -> base.Weighting:
    r"""Aligned-MTL: align the task gradients into orthogonal components of equal norm.

    With the eigendecomposition :math:`G = V \Lambda V^\top` restricted to its
    rank :math:`r` (eigenvalues above :math:`\lambda_{\max} T \varepsilon`,
    :math:`\varepsilon` the float32 machine epsilon by default, see
    ``rank_precision``), the balance transformation

    .. math::
        B = \sqrt{\lambda_s}\, V_r \Lambda_r^{-1/2} V_r^\top, \qquad
        w = B \mathbf 1 \;(= B\text{.sum}(0)), \qquad d = J^\top w ,

    makes the rows of :math:`B J` orthogonal with equal squared norm
    :math:`\lambda_s` (their Gramian is :math:`\lambda_s V_r V_r^\top`), and
    :math:`d` is their sum: the condition number of the aligned system is 1.
    :math:`\lambda_s` is the smallest retained eigenvalue (``scale_mode="min"``,
    the paper and LibMTL), their median (``"median"``, the lower one for an even
    count) or their mean (``"rmse"``, TorchJD's name for the scaling of the
    authors' released code). A zero Gramian gives :math:`B = I`. ``jnp.linalg.eigh``
    runs under ``jit`` and ``vmap``; no iteration.

    Properties (tested): weights are invariant to a common scale of the
    gradients and permutation equivariant; :math:`w^\top G w = \lambda_s
    \|V_r^\top \mathbf 1\|^2` (:math:`= T \lambda_s` at full rank).

    Reference: Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023 (LibMTL's ``Aligned_MTL``,
    whose ``torch.symeig`` no longer exists in torch; TorchJD's ``AlignedMTL``).

    Conventions pinned: LibMTL's weights :math:`B \mathbf 1` (they multiply the
    raw gradients and losses); TorchJD uses :math:`B \mathbf 1 / T`, i.e. these
    divided by T. ``preference=`` in ``update`` replaces :math:`\mathbf 1`:
    :math:`w = B p`, as TorchJD's ``pref_vector`` (whose default is
    :math:`\mathbf 1 / T`).

    - Rank cutoff. LibMTL and TorchJD take :math:`\varepsilon` from
      ``torch.finfo().eps``, the epsilon of torch's *default* dtype, not of the
      Gramian's: 1.2e-7 (float32) even for a float64 Gramian unless
      ``torch.set_default_dtype(torch.float64)`` was called (TorchJD's
      ``_compute_balance_transformation``; it therefore follows the input's
      precision only in a float64-default session). ``rank_precision="float32"``
      (default) is that usual behaviour; ``rank_precision="input"`` uses the
      epsilon of the Gramian's dtype (float64 for float64 inputs: eigenvalues
      down to :math:`T \cdot 2.2 \times 10^{-16} \lambda_{\max}` count in
      the rank), as TorchJD with a float64 default dtype. Only float64
      Gramians are affected: for float32 inputs both are the same.

    Float32 accuracy (``benchmarks/float32_accuracy.py``, TorchJD's 20 x 10 and
    20 x 100 test matrices, degenerate and ill-conditioned): the float32
    direction is within 4e-6 (in units of the largest gradient norm) of the
    float64 answer, and moves by at most 2e-5 under a permutation of the
    tasks (TorchJD's float32 test tolerance: 1e-4). Rank-deficient Gramians
    are well handled because the float32 cutoff sits above the Gramian's
    rounding; a float64 solve with ``rank_precision="input"`` on a
    float32-rounded Gramian would count that rounding as rank. The cutoff is
    a discontinuity of the method (the references' too): an eigenvalue
    within rounding of :math:`T \varepsilon \lambda_{\max}` (seen at 1.08x
    the cutoff) can be kept in one task order and dropped in another, and
    the direction then changes by the size of that component.

    Args:
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.
      rank_precision: ``"float32"`` (the references' usual cutoff, the default)
        or ``"input"`` (the machine epsilon of the Gramian's dtype).

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import aligned_mtl
      >>> jac = jnp.array([[1.0, 0.0], [0.0, 3.0]])
      >>> method = aligned_mtl()
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w]  # both aligned rows have norm 1
      [1.0, 0.3333]
    """
    opts = _options(scale_mode, rank_precision)
    return rule.as_method(
        lambda g, losses, preference, key: aligned_mtl_weights(g, preference=preference, **opts),
        name="aligned_mtl", solver=False, preference="optional",
    )
