"""Aligned-MTL: independent component alignment of the task gradients (Senushkin et al. 2023)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base

Array = jax.Array
ScaleMode = Literal["min", "median", "rmse"]

# The references compute the rank tolerance with torch.finfo().eps: float32, whatever the dtype.
_RANK_EPS = float(np.finfo(np.float32).eps)


def aligned_mtl(scale_mode: ScaleMode = "min") -> base.Weighting:
    r"""Aligned-MTL: align the task gradients into orthogonal components of equal norm.

    With the eigendecomposition :math:`G = V \Lambda V^\top` restricted to its
    rank :math:`r` (eigenvalues above :math:`\lambda_{\max} T \varepsilon`,
    :math:`\varepsilon` the float32 machine epsilon, as the references), the
    balance transformation

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

    Args:
      scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

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
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(
            f"aligned_mtl: scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}."
        )

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        gramian = base.check_gramian(gramian, num_tasks, "aligned_mtl")
        dtype = base.compute_dtype(gramian, losses)
        pref = base.optional_task_vector(
            preference, num_tasks, "aligned_mtl", default=1.0, dtype=dtype,
            meaning="one weight per task",
        )
        g = gramian.astype(dtype)
        g = 0.5 * (g + g.T)
        # Normalise before eigh so that gradients of 1e10 do not overflow (the
        # weights do not depend on the scale).
        scale = jnp.max(jnp.abs(jnp.diagonal(g)))
        positive = scale > jnp.finfo(dtype).tiny
        g = g / jnp.where(positive, scale, 1.0)
        eigenvalues, vectors = jnp.linalg.eigh(g)  # ascending
        lam_max = eigenvalues[-1]
        kept = (eigenvalues > lam_max * num_tasks * _RANK_EPS) & positive
        rank = jnp.sum(kept.astype(jnp.int32))
        safe = jnp.where(kept, eigenvalues, 1.0)
        if scale_mode == "min":
            lam_s = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
        elif scale_mode == "rmse":
            lam_s = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(rank, 1).astype(dtype)
        else:
            # Lower median of the kept (largest `rank`) eigenvalues.
            index = num_tasks - rank + (rank - 1) // 2
            lam_s = eigenvalues[jnp.clip(index, 0, num_tasks - 1)]
        inv_sqrt = jnp.where(kept, jax.lax.rsqrt(safe), 0.0)
        coeffs = jnp.sqrt(jnp.where(rank > 0, lam_s, 1.0)) * inv_sqrt
        weights = vectors @ (coeffs * (vectors.T @ pref))
        return jnp.where(rank > 0, weights, pref), state

    return base.Weighting(
        init=base.init_empty_state, update=update, needs=base.Needs.GRAMIAN, name="aligned_mtl"
    )
