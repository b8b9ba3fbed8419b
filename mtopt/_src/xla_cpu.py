"""A guard against a wrong-answer bug of XLA:CPU in jaxlib 0.10.2.

jaxlib 0.10.2 hands reductions on the CPU to YNNPACK (its "reduce" library
fusion). For a broadcast product reduced over its last axis and multiplied by
another broadcast operand, with 4096 or more rows,

.. code-block:: python

    p = jnp.sum(a[None] * c, -1, keepdims=True) * q[None]   # a: (B, S, D), c: (T, B, S, D)
    out = p * x[None]

the jitted result is wrong (errors of order 100%; the same program run op by op,
in float64, or with jaxlib 0.10.1 is right). That is the shape of a LayerNorm's
backward pass batched over tasks, so the Jacobian of any model with a
LayerNorm is wrong under ``jax.jit`` from T = 4 tasks and 16 x 64 tokens up:
mtopt's Jacobian and structured Gramian paths would give wrong Gramians
(a relative error of 7% on the benchmark's transformer block).

On import, for the affected jaxlib and before the CPU backend starts, mtopt
turns those fusions off (``--xla_cpu_experimental_ynn_fusion_type=`` added to
``XLA_FLAGS``; measured at no cost on the step benchmarks), unless ``XLA_FLAGS``
already sets that option. When the backend has already started (jax arrays
were made before ``import mtopt``) the flag cannot take effect: mtopt then
runs the small program above once and warns if its answer is wrong, saying
how to fix it (import mtopt first, or set the flag in the environment).
"""

from __future__ import annotations

import os
import warnings

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# jaxlib releases whose CPU reduce fusion is known to give wrong answers (and that
# have the flag). tests/test_xla_cpu.py fails on a release that is wrong and not here.
AFFECTED = ("0.10.2",)


def affected() -> bool:
    import jaxlib

    return jaxlib.__version__ in AFFECTED


def backends_started() -> bool:
    """Whether a JAX backend exists yet (``True`` when that cannot be told: then the
    guard checks the answer instead of setting the flag)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # a jax without this private module
        return True
    started = getattr(xla_bridge, "backends_are_initialized", None)
    if started is not None:
        return bool(started())
    return bool(getattr(xla_bridge, "_backends", True))


def reproducer_error() -> float:
    """The relative error of the jitted program above against its eager run on the CPU."""
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    keys = jax.random.split(jax.random.key(0), 4)
    with jax.default_device(cpu):
        a = jax.random.normal(keys[0], (16, 64, 128), jnp.float32)
        c = jax.random.normal(keys[1], (4, 16, 64, 128), jnp.float32)
        q = jax.random.normal(keys[2], (16, 64, 1), jnp.float32)
        x = jax.random.normal(keys[3], (16, 64, 128), jnp.float32)

        def program(a, c, q, x):
            return jnp.sum(a[None] * c, -1, keepdims=True) * q[None] * x[None]

        got = jax.jit(program)(a, c, q, x)
        want = jnp.sum(a[None] * c, -1, keepdims=True) * q[None]  # op by op
        want = want * x[None]
        return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def guard() -> str:
    """Apply the workaround where it applies; returns what was done (for tests)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return "user flag"
    if not affected():
        return "not affected"
    if not backends_started():
        os.environ["XLA_FLAGS"] = (flags + " " + FLAG + "=").strip()
        return "flag set"
    try:
        error = reproducer_error()
    except RuntimeError:  # no CPU backend in this process
        return "no cpu"
    if error > 1e-3:
        import jaxlib

        warnings.warn(
            f"jaxlib {jaxlib.__version__}'s CPU compiler gives wrong answers for batched "
            "reductions (e.g. a LayerNorm's backward pass over several tasks: relative error "
            f"{error:.0%} here), and the JAX CPU backend started before mtopt was imported, "
            f"so mtopt could not turn the faulty fusion off. Import mtopt before creating any "
            f"jax array, or set XLA_FLAGS='{FLAG}=' in the environment.",
            RuntimeWarning, stacklevel=3,
        )
        return "warned"
    return "backend started, correct"
