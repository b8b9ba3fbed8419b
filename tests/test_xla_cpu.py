"""The guard against jaxlib 0.10.2's wrong CPU reduce fusion (mtopt/_src/xla_cpu.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import mtopt
from mtopt._src import xla_cpu


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    environ.update(env, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=environ,
                          capture_output=True, text=True, timeout=300)


def test_the_reproducer_is_right_in_this_process():
    """Fails on a jaxlib whose CPU fusion is wrong and that the guard does not know."""
    assert xla_cpu.reproducer_error() < 1e-5


def test_layer_norm_jacobian_under_jit_equals_float64():
    """The user-facing symptom: T = 4 task gradients through a LayerNorm, 16 x 64 rows."""
    keys = jax.random.split(jax.random.key(0), 3)
    h0 = jax.random.normal(keys[0], (16, 64, 32))
    w = jax.random.normal(keys[1], (32, 32)) / 6.0
    head = jax.random.normal(keys[2], (32, 4))

    def losses(w, h0, head):
        h = h0 + h0 @ w
        mu = jnp.mean(h, -1, keepdims=True)
        h = (h - mu) * jax.lax.rsqrt(jnp.mean(jnp.square(h - mu), -1, keepdims=True) + 1e-5)
        return jnp.mean(h, axis=1).sum(0) @ head

    got = jax.jit(mtopt.task_jacobian(losses))(w, h0, head)[1]
    with jax.enable_x64(True):
        args64 = [np.asarray(a, np.float64) for a in (w, h0, head)]
        want = jax.jacrev(losses)(*args64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.max(np.abs(want)))


def test_import_sets_the_flag_only_where_needed():
    proc = _run("import os, mtopt; print(mtopt._xla_cpu.guard(), '|', "
                "os.environ.get('XLA_FLAGS', ''))")
    assert proc.returncode == 0, proc.stderr
    done, flags = (part.strip() for part in proc.stdout.split("|"))
    if xla_cpu.affected():
        assert done == "user flag" and flags == xla_cpu.FLAG + "="  # set by the import
    else:
        assert done == "not affected" and xla_cpu.FLAG not in flags


def test_a_users_own_setting_is_kept():
    mine = xla_cpu.FLAG + "=dot"
    proc = _run("import os, mtopt; print(os.environ['XLA_FLAGS'])", XLA_FLAGS=mine)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == mine


def test_backend_started_first_warns_when_the_answer_is_wrong():
    proc = _run("import jax.numpy as jnp; jnp.zeros(1)\n"
                "import mtopt\n"
                "from mtopt._src import xla_cpu\n"
                "print(xla_cpu.affected(), xla_cpu.reproducer_error())")
    assert proc.returncode == 0, proc.stderr
    affected, error = proc.stdout.split()
    wrong = affected == "True" and float(error) > 1e-3
    assert ("RuntimeWarning" in proc.stderr and "XLA_FLAGS=" in proc.stderr) == wrong
    if affected == "True":  # jaxlib 0.10.2: the bug is live when the flag is missing
        assert wrong
