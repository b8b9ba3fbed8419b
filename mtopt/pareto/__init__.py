"""Pareto-front tools, jittable: dominance, hypervolume, distance indicators, preference sets.

Minimisation convention throughout; point sets are arrays of shape ``(n_points, n_obj)``.
"""

from mtopt.pareto._dominance import dominates, non_dominated_mask, non_dominated_rank
from mtopt.pareto._hypervolume import hypervolume, hypervolume_gradient
from mtopt.pareto._indicators import gd, igd, igd_plus, lmin, spacing
from mtopt.pareto._preferences import das_dennis, dirichlet, uniform_preferences
from mtopt.pareto._sweep import SweepResult, sweep

# Pareto set learning builds flax.nnx models: loaded on first use, so that
# ``import mtopt`` does not import flax.nnx.
_LAZY = {"BoxBound", "PSLHistory", "PreferenceMLP", "train_psl"}


def __getattr__(name):
    if name in _LAZY:
        from mtopt.pareto import _psl

        return getattr(_psl, name)
    raise AttributeError(f"module 'mtopt.pareto' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY)

__all__ = (
    "BoxBound",
    "PSLHistory",
    "PreferenceMLP",
    "SweepResult",
    "das_dennis",
    "dirichlet",
    "dominates",
    "gd",
    "hypervolume",
    "hypervolume_gradient",
    "igd",
    "igd_plus",
    "lmin",
    "non_dominated_mask",
    "non_dominated_rank",
    "spacing",
    "sweep",
    "train_psl",
    "uniform_preferences",
)
