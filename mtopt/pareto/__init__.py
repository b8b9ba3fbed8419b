"""Pareto-front tools, jittable: dominance, hypervolume, distance indicators, preference sets.

Minimisation convention throughout; point sets are arrays of shape ``(n_points, n_obj)``.
"""

from mtopt.pareto._dominance import dominates, non_dominated_mask, non_dominated_rank
from mtopt.pareto._hypervolume import hypervolume, hypervolume_gradient
from mtopt.pareto._indicators import gd, igd, igd_plus, lmin, spacing
from mtopt.pareto._preferences import das_dennis, dirichlet, uniform_preferences
from mtopt.pareto._psl import BoxBound, PreferenceMLP, PSLHistory, train_psl
from mtopt.pareto._sweep import SweepResult, sweep

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
