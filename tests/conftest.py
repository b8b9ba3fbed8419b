"""Suite-wide settings: strict dtype and rank promotion catch silent broadcasting
of (T,) weights against (T, ...) gradients, as in equinox's test suite."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


# The files below sweep every registered method. Their default run keeps a
# representative subset (loss-only, stateful, Gramian, iterative solver, stochastic,
# Jacobian and preference methods); `pytest -m slow` runs all 33 methods.
# tests/test_registry.py checks every method's claimed properties in the default run.
REPRESENTATIVE_METHODS = frozenset(
    {"equal", "uncertainty", "famo", "mgda", "pcgrad", "upgrad", "nash_mtl", "moco",
     "graddrop", "epo"}
)
_METHOD_SWEEP_FILES = frozenset(
    {"test_hypothesis_methods.py", "test_state_safety.py", "test_validation_messages.py",
     "test_no_retrace.py", "test_checkpoint.py"}
)


def pytest_collection_modifyitems(config, items):
    import pytest

    import mtopt

    names = set(mtopt.method_names())
    # chex's without_jit variants run every op eagerly (each op compiled on its own);
    # where the same test also runs jitted, the eager copy goes to the slow set:
    # tests/test_registry.py still runs every method without jit by default.
    jitted = {item.nodeid for item in items if item.nodeid.endswith("__with_jit")}
    for item in items:
        if item.nodeid.endswith("__without_jit"):
            if item.nodeid.replace("__without_jit", "__with_jit") in jitted:
                item.add_marker(pytest.mark.slow)
        if item.path.name not in _METHOD_SWEEP_FILES or not hasattr(item, "callspec"):
            continue
        tokens = set(item.callspec.id.split("-"))
        methods = tokens & names
        if methods and not methods & REPRESENTATIVE_METHODS:
            item.add_marker(pytest.mark.slow)
