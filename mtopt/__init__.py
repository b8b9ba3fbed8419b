"""mtopt: multi-task and multi-objective gradient methods for JAX.

Per-task Jacobian -> Gramian -> weights -> combined gradient, as pure functions
that run under ``jax.jit`` and ``jax.vmap``. Please don't import from ``mtopt._src``.
"""

# First, before anything can start the CPU backend: turn off jaxlib 0.10.2's faulty CPU
# reduce fusion (wrong batched LayerNorm backward passes; see mtopt/_src/xla_cpu.py).
from mtopt._src import xla_cpu as _xla_cpu

_xla_cpu.guard()

from mtopt import checkpoint, pareto, plots, problems, rules, states
from mtopt._src.aggregator import aggregator_info, as_aggregator
from mtopt._src.base import EmptyState, Needs, SolverInfo, SolverState, Weighting
from mtopt._src.gramian import combine, cosine_matrix, gramian, num_conflicts, task_norms
from mtopt._src.jacobian import task_jacobian
from mtopt._src.methods.aligned_mtl import aligned_mtl
from mtopt._src.methods.cagrad import cagrad
from mtopt._src.methods.config_method import config
from mtopt._src.methods.db_mtl import db_mtl
from mtopt._src.methods.dualproj import dualproj
from mtopt._src.methods.dwa import dwa
from mtopt._src.methods.epo import epo
from mtopt._src.methods.excess_mtl import excess_mtl
from mtopt._src.methods.fairgrad import fairgrad
from mtopt._src.methods.famo import famo
from mtopt._src.methods.gls import gls
from mtopt._src.methods.graddrop import graddrop
from mtopt._src.methods.gradnorm import gradnorm
from mtopt._src.methods.gradvac import gradvac
from mtopt._src.methods.imtl import imtl, imtl_g, imtl_l
from mtopt._src.methods.linear import equal, linear, log_scalarization
from mtopt._src.methods.mgda import mgda
from mtopt._src.methods.moco import moco
from mtopt._src.methods.nash_mtl import nash_mtl
from mtopt._src.methods.pcgrad import pcgrad
from mtopt._src.methods.pmtl import pmtl
from mtopt._src.methods.rlw import rlw
from mtopt._src.methods.scalarization import (
    cosmos, pbi, preference_linear, smooth_tchebycheff, tchebycheff,
)
from mtopt._src.methods.uncertainty import uncertainty
from mtopt._src.methods.upgrad import upgrad
from mtopt._src.nan_policy import keep_if_skipped
from mtopt._src.objectives import Objectives
from mtopt._src.registry import (
    Condition, MethodInfo, method, method_info, method_names, methods_table,
)
from mtopt._src.scalars_hook import log_scalars
from mtopt._src.representation import representation_value_and_grad
from mtopt._src.step import StepInfo, value_and_grad

__version__ = "0.2.0"

__all__ = (
    # the step, its result and the protocol
    "value_and_grad", "representation_value_and_grad", "StepInfo", "Objectives",
    "keep_if_skipped", "log_scalars", "Weighting", "Needs", "EmptyState", "SolverState",
    "SolverInfo",
    # Gramian tools and the optax adapter
    "task_jacobian", "gramian", "combine", "cosine_matrix", "task_norms", "num_conflicts",
    "as_aggregator", "aggregator_info",
    # the registry
    "method", "method_names", "method_info", "methods_table", "MethodInfo", "Condition",
    # the methods (factories)
    "aligned_mtl", "cagrad", "config", "cosmos", "db_mtl", "dualproj", "dwa", "epo", "equal",
    "excess_mtl", "fairgrad", "famo", "gls", "graddrop", "gradnorm", "gradvac", "imtl",
    "imtl_g", "imtl_l", "linear", "log_scalarization", "mgda", "moco", "nash_mtl", "pbi",
    "pcgrad", "pmtl", "preference_linear", "rlw", "smooth_tchebycheff", "tchebycheff",
    "uncertainty", "upgrad",
    # namespaces
    "rules", "states", "pareto", "problems", "plots", "checkpoint", "tasks",
)

# Names that moved out of the top level (mtopt 0.1 -> 0.2): still reachable here, with a
# DeprecationWarning naming the new place.
_MOVED = {
    **{name: ("mtopt.states", name) for name in states.__all__},
    "min_norm_simplex": ("mtopt.rules", "min_norm_simplex"),
    "famo_update_logits": ("mtopt._src.methods.famo", "famo_update_logits"),
    "dwa_end_epoch": ("mtopt._src.methods.dwa", "dwa_end_epoch"),
}
_MOVED_HINT = {
    "famo_update_logits": "call method.after_step(state, new_losses) on mtopt.famo(lagged=False)",
    "dwa_end_epoch": "call method.end_epoch(state) on mtopt.dwa(steps_per_epoch='manual')",
}


def __getattr__(name):
    import importlib

    # mtopt.tasks (flax.nnx models and their data) is loaded on first use, so that
    # ``import mtopt`` does not import flax.nnx.
    if name == "tasks":
        return importlib.import_module("mtopt.tasks")
    if name in _MOVED:
        import warnings

        module, attr = _MOVED[name]
        hint = _MOVED_HINT.get(name, f"use {module}.{attr}")
        warnings.warn(
            f"mtopt.{name} has moved off the top level: {hint}.", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'mtopt' has no attribute {name!r}")
