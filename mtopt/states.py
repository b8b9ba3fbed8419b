"""The states of the stateful methods, for type checks, checkpoints and inspection.

A method's ``init(num_tasks)`` makes its state and each step returns the next
one; these classes are what they are. Stateless methods use
:class:`mtopt.EmptyState` (closed-form rules) or :class:`mtopt.SolverState`
(iterative rules: the last solve's diagnostics).

Example:
  >>> import mtopt
  >>> state = mtopt.famo().init(2)
  >>> isinstance(state, mtopt.states.FAMOState), state.logits.tolist()
  (True, [0.0, 0.0])
"""

from mtopt._src.aggregator import AggregatorState
from mtopt._src.methods.db_mtl import DBMTLState
from mtopt._src.methods.dwa import DWAEpochState, DWAWindowState
from mtopt._src.methods.excess_mtl import ExcessMTLState
from mtopt._src.methods.famo import FAMOState
from mtopt._src.methods.gradnorm import GradNormState
from mtopt._src.methods.gradvac import GradVacState
from mtopt._src.methods.imtl import IMTLState
from mtopt._src.methods.moco import MoCoState
from mtopt._src.methods.nash_mtl import NashMTLState
from mtopt._src.methods.pmtl import PMTLState
from mtopt._src.methods.uncertainty import UncertaintyState

__all__ = (
    "AggregatorState", "DBMTLState", "DWAEpochState", "DWAWindowState", "ExcessMTLState",
    "FAMOState", "GradNormState", "GradVacState", "IMTLState", "MoCoState", "NashMTLState",
    "PMTLState", "UncertaintyState",
)
