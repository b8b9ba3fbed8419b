"""Differentiable multi-objective benchmark problems with their true Pareto fronts.

Each factory returns a :class:`Problem`: ``f(x)`` for one decision vector (``jax.vmap`` it),
the decision box, ``pareto_front(n_points)``, a hypervolume reference point and, where the
literature has them, standard start points.
"""

from mtopt.problems._dtlz import dtlz1, dtlz2
from mtopt.problems._problem import Problem
from mtopt.problems._regression import regression, regression_data
from mtopt.problems._toy import toy
from mtopt.problems._vlmop import vlmop2
from mtopt.problems._zdt import zdt1, zdt2, zdt3

__all__ = (
    "Problem",
    "dtlz1",
    "dtlz2",
    "regression",
    "regression_data",
    "toy",
    "vlmop2",
    "zdt1",
    "zdt2",
    "zdt3",
)
