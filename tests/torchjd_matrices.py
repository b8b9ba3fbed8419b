"""TorchJD's standard aggregator test matrices, transcribed in NumPy.

The constructions of TorchJD's ``tests/unit/aggregation/_inputs.py`` and
``_matrix_samplers.py`` (same families and dimensions, NumPy's generator instead of
torch's, so the same kinds of matrices, not the same numbers). Shared by
``tests/test_float32_accuracy.py`` and ``benchmarks/float32_accuracy.py``.
"""

from __future__ import annotations

import numpy as np


def _orthonormal_complement(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    m, k = q.shape
    a = rng.standard_normal((m, m - k))
    a = a - q @ (q.T @ a)
    return np.linalg.qr(a)[0]


def _orthonormal(dim: int, rng: np.random.Generator) -> np.ndarray:
    return _orthonormal_complement(np.zeros((dim, 0)), rng)


def _singular_values(rank: int, rng: np.random.Generator) -> np.ndarray:
    return np.diag(np.abs(rng.standard_normal(rank)))


def normal_matrix(m: int, n: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """TorchJD's ``NormalSampler``."""
    u, vt = _orthonormal(m, rng), _orthonormal(n, rng)
    return u[:, :rank] @ _singular_values(rank, rng) @ vt[:rank]


def strong_matrix(m: int, n: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """TorchJD's ``StrongSampler``: ``v^T A = 0`` for a positive ``v``."""
    v = np.abs(rng.standard_normal(m))
    u2 = _orthonormal_complement((v / np.linalg.norm(v))[:, None], rng)
    vt = _orthonormal(n, rng)
    return u2[:, :rank] @ _singular_values(rank, rng) @ vt[:rank]


def strictly_weak_matrix(m: int, n: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """TorchJD's ``StrictlyWeakSampler``."""
    u = np.abs(rng.standard_normal(m))
    split = int(rng.integers(1, m))
    order = rng.permutation(m)
    first, second = order[:split], order[split:]
    v, v_prime = np.zeros(m), np.zeros(m)
    v[first] = u[first] / np.linalg.norm(u[first])
    v_prime[second] = u[second] / np.linalg.norm(u[second])
    u1 = np.stack([v, v_prime]).T
    full = np.hstack([u1, _orthonormal_complement(u1, rng)])
    vt = _orthonormal(n, rng)
    return full[:, 1 : rank + 1] @ _singular_values(rank, rng) @ vt[:rank]


def non_weak_matrix(m: int, n: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """TorchJD's ``NonWeakSampler``."""
    u = np.abs(rng.standard_normal(m))
    u1 = (u / np.linalg.norm(u))[:, None]
    full = np.hstack([u1, _orthonormal_complement(u1, rng)])
    vt = _orthonormal(n, rng)
    return full[:, :rank] @ _singular_values(rank, rng) @ vt[:rank]


NORMAL_DIMS = ((4, 3, 1), (4, 3, 2), (4, 3, 3), (9, 11, 5), (9, 11, 9))
STATIONARITY_DIMS = ((20, 10, 10), (20, 10, 5), (20, 10, 1), (20, 100, 1), (20, 100, 19))
FAMILIES = (
    ("strong", strong_matrix), ("strictly_weak", strictly_weak_matrix),
    ("non_weak", non_weak_matrix),
)


def torchjd_matrices(seed: int = 0) -> dict[str, np.ndarray]:
    """TorchJD's ``matrices`` (T >= 2) and the three stationarity families, float32-rounded."""
    rng = np.random.default_rng(seed)
    out = {}
    for m, n, r in NORMAL_DIMS:
        out[f"normal{m}x{n}r{r}"] = normal_matrix(m, n, r, rng)
    for family, sampler in FAMILIES:
        for m, n, r in STATIONARITY_DIMS:
            out[f"{family}{m}x{n}r{r}"] = sampler(m, n, r, rng)
    return {k: v.astype(np.float32) for k, v in out.items()}
