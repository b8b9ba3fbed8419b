"""Small dense linear algebra for T x T problems, accurate in float32.

Exact products by splitting every float32 into two 12-bit halves and Knuth's
TwoSum for the sums (double-float arithmetic, no ``jax_enable_x64`` needed, on
every backend); a symmetric eigendecomposition refined the same way, and the
pseudo-inverse solve built on it. Used by the dual-cone QP (UPGrad, DualProj),
ConFIG and IMTL-G, where a sum taken in another task order must not move the
weights by more than the problem's own rounding.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def _two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """Knuth's TwoSum: ``s + e == a + b`` exactly, ``s = fl(a + b)``."""
    s = a + b
    b_virtual = s - a
    a_virtual = s - b_virtual
    return s, (a - a_virtual) + (b - b_virtual)


def _split(x: Array) -> tuple[Array, Array]:
    """``x = hi + lo`` exactly, each half with at most 12 significant bits (float32).

    The split clears the low 12 bits of the significand through a bit mask
    rather than Dekker's ``(2^12 + 1) x`` trick, so a fused multiply-add (which
    XLA may form on GPU) cannot change it; products of two halves are then exact
    in float32.
    """
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, x - hi


def compensated_sum(terms: Array) -> Array:
    """Sum over the last axis, as accurate as if computed in twice the precision.

    A pairwise tree of TwoSums (cascaded summation): the result is the exact sum
    with a relative error of about ``eps + n eps^2 sum|terms| / |sum|``, so it
    does not depend on the order of the terms (but for that rounding).

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.linalg import compensated_sum
      >>> x = jnp.array([1.0, 1e-8, -1.0])
      >>> float(jnp.sum(x)), round(float(compensated_sum(x)), 12)
      (0.0, 1e-08)
    """
    n = terms.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    if size > n:
        pad = jnp.zeros(terms.shape[:-1] + (size - n,), terms.dtype)
        terms = jnp.concatenate([terms, pad], axis=-1)
    error = jnp.zeros(terms.shape[:-1], terms.dtype)
    while terms.shape[-1] > 1:
        terms, e = _two_sum(terms[..., 0::2], terms[..., 1::2])
        error = error + jnp.sum(e, axis=-1)
    return terms[..., 0] + error


def accurate_matvec(matrix: Array, vector: Array, offset: Optional[Array] = None) -> Array:
    r"""``matrix @ vector + offset``, accurate to the rounding of the result.

    In float32 every product is formed exactly from :func:`_split` halves and
    the ``4 T + 1`` terms of each row are summed with :func:`compensated_sum`
    (double-float arithmetic), so the result is the exactly rounded value up to
    a relative ``T eps^2`` of the terms' size: what iterative refinement needs
    for residuals of a system with condition number up to about ``1 / eps``.
    Pure elementwise JAX (no matmul), so TPU's reduced-precision float32 matmul
    does not apply; works without ``jax_enable_x64``. Other dtypes (float64)
    use the plain product, whose own precision is ample for the T x T problems
    of this module.

    Args:
      matrix: (..., T, T) floating matrix.
      vector: (..., T) vector of the same dtype.
      offset: optional (..., T) vector added to the product.

    Returns:
      The (..., T) product, in the input dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.linalg import accurate_matvec
      >>> a = jnp.array([[1.0, 1e-8], [1.0, 1.0]])
      >>> y = jnp.array([1.0, 1.0])
      >>> round(float(accurate_matvec(a, y, -jnp.array([1.0, 2.0]))[0]), 12)
      1e-08
      >>> float((a @ y - jnp.array([1.0, 2.0]))[0])  # plain float32
      0.0
    """
    if matrix.dtype != jnp.float32:
        out = matrix @ vector
        return out if offset is None else out + offset
    m_hi, m_lo = _split(matrix)
    v_hi, v_lo = _split(vector)
    v_hi, v_lo = v_hi[..., None, :], v_lo[..., None, :]
    terms = [m_hi * v_hi, m_hi * v_lo, m_lo * v_hi, m_lo * v_lo]
    if offset is not None:
        terms.append(offset[..., :, None])
    return compensated_sum(jnp.concatenate(terms, axis=-1))


def accurate_matmul(a: Array, b: Array, offset: Optional[Array] = None) -> Array:
    """``a @ b + offset`` for (T, T) matrices, column by column with :func:`accurate_matvec`."""
    if offset is None:
        return jax.vmap(lambda col: accurate_matvec(a, col), in_axes=1, out_axes=1)(b)
    return jax.vmap(accurate_matvec, in_axes=(None, 1, 1), out_axes=1)(a, b, offset)


@functools.partial(jax.jit, static_argnames="steps")
def refined_eigh(matrix: Array, steps: int = 2) -> tuple[Array, Array]:
    r"""Eigendecomposition of a symmetric (T, T) matrix, refined to the matrix's own rounding.

    ``jnp.linalg.eigh`` in float32 mixes two eigenvectors by about
    ``eps ||A|| / gap``: on a near-singular Gramian (an eigenvalue of 1e-4 next
    to a null one) that is 1e-3, and it changes with the order of the tasks.
    In float32 this runs ``steps`` steps of Ogita & Aishima's refinement
    ("Iterative refinement for symmetric eigenvalue decomposition", Japan J.
    Indust. Appl. Math. 35, 2018, Algorithm 1): with ``R = I - V^T V`` and
    ``S = V^T A V`` formed in double-float (:func:`accurate_matmul`),
    ``lambda_i = S_ii / (1 - R_ii)`` and ``V <- V + V E``,
    ``E_ij = (S_ij + lambda_j R_ij) / (lambda_j - lambda_i)`` for eigenvalues
    further apart than ``delta = 2 (||S - diag S|| + ||A|| ||R||)``, ``R_ij / 2``
    otherwise (clusters are only re-orthogonalised). The norms are Frobenius
    norms, upper bounds of the paper's spectral norms that need no SVD: a
    pair whose gap lies between the two thresholds is only re-orthogonalised
    (conservative), never divided by a gap below the rounding. Convergence is quadratic:
    after two steps the mixing is at the rounding of ``V`` itself (``eps``,
    not ``eps / gap``), so a permutation of the tasks changes the result by
    rounding only. Other dtypes: plain ``eigh``.

    Args:
      matrix: (T, T) symmetric matrix.
      steps: refinement steps (float32 only).

    Returns:
      ``(eigenvalues, vectors)``, ascending, as ``jnp.linalg.eigh``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.linalg import refined_eigh
      >>> lam, vec = refined_eigh(jnp.array([[2.0, 1.0], [1.0, 2.0]]))
      >>> [round(float(x), 6) for x in lam]
      [1.0, 3.0]
    """
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    if matrix.dtype != jnp.float32:
        return eigenvalues, vectors
    eye = jnp.eye(matrix.shape[0], dtype=matrix.dtype)

    def refine(_, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        _, vectors = carry
        s = accurate_matmul(vectors.T, accurate_matmul(matrix, vectors))
        r = -accurate_matmul(vectors.T, vectors, -eye)
        eigenvalues = jnp.diagonal(s) / (1.0 - jnp.diagonal(r))
        off = jnp.where(eye > 0, 0.0, s)
        delta = 2.0 * (
            jnp.linalg.norm(off) + jnp.max(jnp.abs(eigenvalues)) * jnp.linalg.norm(r)
        )
        gap = eigenvalues[None, :] - eigenvalues[:, None]
        apart = (jnp.abs(gap) > delta) & (eye == 0)
        correction = jnp.where(
            apart, (s + eigenvalues[None, :] * r) / jnp.where(apart, gap, 1.0), 0.5 * r
        )
        return eigenvalues, vectors + vectors @ correction

    eigenvalues, vectors = jax.lax.fori_loop(0, steps, refine, (eigenvalues, vectors))
    order = jnp.argsort(eigenvalues)
    return eigenvalues[order], vectors[:, order]


def pinv_solve(matrix: Array, rhs: Array, rtol: Optional[float] = None) -> Array:
    r"""``A^+ b`` for a symmetric PSD (T, T) ``A``, eigenvalues below ``rtol lambda_max`` dropped.

    The pseudo-inverse of NumPy's and torch's ``pinv`` (default ``rtol = T eps``),
    through :func:`refined_eigh` and double-float products, then one step of
    iterative refinement of ``A x = b`` on the kept eigenspace. In float32 the
    result is exact for the stored ``A`` up to ``eps`` times its condition
    number on the kept eigenspace (not its square, nor ``eps / gap`` from the
    eigenvectors), and a permutation of the tasks permutes it up to rounding.
    """
    rtol = matrix.shape[0] * float(jnp.finfo(matrix.dtype).eps) if rtol is None else rtol
    eigenvalues, vectors = refined_eigh(matrix)
    keep = eigenvalues > rtol * jnp.maximum(jnp.max(eigenvalues), 0.0)
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, eigenvalues, 1.0), 0.0)

    def apply(b: Array) -> Array:
        return accurate_matvec(vectors, inverse * accurate_matvec(vectors.T, b))

    x = apply(rhs)
    return x - apply(accurate_matvec(matrix, x, -rhs))
