"""mtopt: multi-task and multi-objective gradient methods for JAX.

Per-task Jacobian -> Gramian -> weights -> combined gradient, as pure functions
that run under ``jax.jit`` and ``jax.vmap``. Please don't import from ``mtopt._src``.
"""

from mtopt._src.aggregator import AggregatorState, as_aggregator
from mtopt._src.base import EmptyState, Needs, Weighting
from mtopt._src.gramian import combine, cosine_matrix, gramian, num_conflicts, task_norms
from mtopt._src.jacobian import task_jacobian
from mtopt._src.methods.dwa import DWAEpochState, DWAWindowState, dwa, dwa_end_epoch
from mtopt._src.methods.linear import equal, linear, log_scalarization
from mtopt._src.methods.mgda import mgda
from mtopt._src.methods.uncertainty import UncertaintyState, uncertainty
from mtopt._src.min_norm import min_norm_simplex
from mtopt._src.objectives import Objectives
from mtopt._src.representation import representation_value_and_grad
from mtopt._src.step import StepInfo, value_and_grad

__version__ = "0.1.0"

__all__ = (
    "AggregatorState",
    "DWAEpochState",
    "DWAWindowState",
    "EmptyState",
    "Needs",
    "Objectives",
    "StepInfo",
    "UncertaintyState",
    "Weighting",
    "as_aggregator",
    "combine",
    "cosine_matrix",
    "dwa",
    "dwa_end_epoch",
    "equal",
    "gramian",
    "linear",
    "log_scalarization",
    "mgda",
    "min_norm_simplex",
    "num_conflicts",
    "representation_value_and_grad",
    "task_jacobian",
    "task_norms",
    "uncertainty",
    "value_and_grad",
)
