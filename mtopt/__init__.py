"""mtopt: multi-task and multi-objective gradient methods for JAX.

Per-task Jacobian -> Gramian -> weights -> combined gradient, as pure functions
that run under ``jax.jit`` and ``jax.vmap``. Please don't import from ``mtopt._src``.
"""

from mtopt import checkpoint, pareto, plots, problems
from mtopt._src.aggregator import AggregatorState, as_aggregator
from mtopt._src.base import EmptyState, Needs, SolverInfo, SolverState, Weighting
from mtopt._src.gramian import combine, cosine_matrix, gramian, num_conflicts, task_norms
from mtopt._src.jacobian import task_jacobian
from mtopt._src.methods.aligned_mtl import aligned_mtl
from mtopt._src.methods.cagrad import cagrad
from mtopt._src.methods.config_method import config
from mtopt._src.methods.db_mtl import DBMTLState, db_mtl
from mtopt._src.methods.dualproj import dualproj
from mtopt._src.methods.dwa import DWAEpochState, DWAWindowState, dwa, dwa_end_epoch
from mtopt._src.methods.epo import epo
from mtopt._src.methods.excess_mtl import ExcessMTLState, excess_mtl
from mtopt._src.methods.fairgrad import fairgrad
from mtopt._src.methods.famo import FAMOState, famo, famo_update_logits
from mtopt._src.methods.gls import gls
from mtopt._src.methods.graddrop import graddrop
from mtopt._src.methods.gradnorm import GradNormState, gradnorm
from mtopt._src.methods.gradvac import GradVacState, gradvac
from mtopt._src.methods.imtl import IMTLState, imtl, imtl_g, imtl_l
from mtopt._src.methods.linear import equal, linear, log_scalarization
from mtopt._src.methods.mgda import mgda
from mtopt._src.methods.moco import MoCoState, moco
from mtopt._src.methods.nash_mtl import NashMTLState, nash_mtl
from mtopt._src.methods.pcgrad import pcgrad
from mtopt._src.methods.pmtl import PMTLState, pmtl
from mtopt._src.methods.rlw import rlw
from mtopt._src.methods.scalarization import (
    cosmos, pbi, preference_linear, smooth_tchebycheff, tchebycheff,
)
from mtopt._src.methods.uncertainty import UncertaintyState, uncertainty
from mtopt._src.methods.upgrad import upgrad
from mtopt._src.min_norm import min_norm_simplex
from mtopt._src.nan_policy import keep_if_skipped
from mtopt._src.objectives import Objectives
from mtopt._src.registry import (
    Condition, MethodInfo, method, method_info, method_names, methods_table,
)
from mtopt._src.scalars_hook import log_scalars
from mtopt._src.representation import representation_value_and_grad
from mtopt._src.step import StepInfo, value_and_grad

__version__ = "0.1.0"

__all__ = (
    "AggregatorState", "Condition", "DBMTLState", "DWAEpochState", "DWAWindowState", "EmptyState",
    "ExcessMTLState", "FAMOState", "GradNormState", "GradVacState", "IMTLState", "MethodInfo",
    "MoCoState", "NashMTLState", "Needs", "Objectives", "PMTLState", "SolverInfo",
    "SolverState", "StepInfo",
    "UncertaintyState", "Weighting",
    "aligned_mtl", "as_aggregator", "cagrad", "checkpoint", "combine", "config", "cosine_matrix", "cosmos",
    "db_mtl", "dualproj", "dwa", "dwa_end_epoch", "epo", "equal", "excess_mtl", "fairgrad",
    "famo", "famo_update_logits", "gls", "graddrop", "gradnorm", "gradvac", "gramian", "imtl",
    "imtl_g", "imtl_l", "keep_if_skipped", "linear", "log_scalars", "log_scalarization", "method", "method_info", "method_names",
    "methods_table", "mgda", "min_norm_simplex", "moco", "nash_mtl", "num_conflicts", "pareto", "plots",
    "pbi", "pcgrad", "pmtl", "preference_linear", "problems", "representation_value_and_grad", "tasks",
    "rlw", "smooth_tchebycheff", "task_jacobian", "task_norms", "tchebycheff", "uncertainty",
    "upgrad", "value_and_grad",
)


def __getattr__(name):
    # mtopt.tasks (flax.nnx models and their data) is loaded on first use, so that
    # ``import mtopt`` does not import flax.nnx.
    if name == "tasks":
        import importlib

        return importlib.import_module("mtopt.tasks")
    raise AttributeError(f"module 'mtopt' has no attribute {name!r}")
