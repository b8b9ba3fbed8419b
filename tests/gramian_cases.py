"""Random and degenerate Gramians shared by the method tests.

Each case is ``(name, J)`` with ``J`` a float64 NumPy array of shape (T, P), the
task gradients as rows; ``G = J @ J.T``. Test-only: NumPy, no JAX.
"""

from __future__ import annotations

import numpy as np


def jacobian_cases(seed: int = 0, num_random: int = 40) -> list[tuple[str, np.ndarray]]:
    """Random, rank-deficient, zero, duplicated, conflicting and badly scaled Jacobians."""
    rng = np.random.default_rng(seed)
    cases: list[tuple[str, np.ndarray]] = []
    for k in range(num_random):
        t = int(rng.integers(1, 9))
        p = int(rng.integers(1, 12))
        cases.append((f"random{k}_T{t}_P{p}", rng.normal(size=(t, p))))
    for t in (2, 3, 5, 8):
        base = rng.normal(size=(1, 6))
        cases.append((f"collinear_T{t}", rng.normal(size=(t, 1)) * base))
        cases.append((f"rank2_T{t}", rng.normal(size=(t, 2)) @ rng.normal(size=(2, 7))))
        j = rng.normal(size=(t, 5))
        j[0] = 0.0
        cases.append((f"zero_row_T{t}", j))
        cases.append((f"all_zero_T{t}", np.zeros((t, 4))))
        j = rng.normal(size=(t, 5))
        j[-1] = j[0]
        cases.append((f"duplicate_T{t}", j))
        j = rng.normal(size=(t, 5))
        j[1] = -j[0]
        cases.append((f"opposite_T{t}", j))
    for scale in (1e-10, 1e-8, 1e-4, 1e4, 1e8, 1e10):
        cases.append((f"scale{scale:g}", scale * rng.normal(size=(4, 6))))
    mixed = rng.normal(size=(3, 6))
    mixed[0] *= 1e-6
    mixed[2] *= 1e6
    cases.append(("mixed_scales", mixed))
    cases.append(("single_task", rng.normal(size=(1, 5))))
    cases.append(("paper_example", np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])))
    return cases


def gramian(j: np.ndarray) -> np.ndarray:
    """``J J^T`` in float64."""
    return j @ j.T
