"""The built wheel installs into a fresh virtual environment and works there.

The wheel is built from the working tree (``pip wheel --no-deps``), installed with
``--no-deps --no-index`` into a new venv whose only other packages are this
environment's dependencies (put on its path by a ``.pth`` file, which does not load
the editable install of mtopt). From a directory outside the repository, the
installed copy imports, runs a training step of a Gramian method, reports the
package version in its metadata, and the ``mtopt-bench`` entry point runs.
"""

from __future__ import annotations

import pathlib
import site
import subprocess
import sys
import venv
import zipfile

import mtopt

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMOKE = """
import importlib.metadata, pathlib, sys
import jax.numpy as jnp
import mtopt
assert "site-packages" in mtopt.__file__ and {root!r} not in mtopt.__file__, mtopt.__file__
assert importlib.metadata.version("mtopt") == mtopt.__version__ == {version!r}
fn = lambda p: {{"a": jnp.sum((p - 1.0) ** 2), "b": jnp.sum((p + 1.0) ** 2)}}
method = mtopt.upgrad()
grads, info, _ = mtopt.value_and_grad(fn, method)(jnp.array([0.5, 2.0]), method.init(2))
assert info.names == ("a", "b") and bool(jnp.all(jnp.isfinite(grads)))
import mtopt.rules, mtopt.states, mtopt.pareto, mtopt.problems, mtopt.runner, mtopt.tasks
print("ok", mtopt.__version__)
"""


def test_wheel_installs_and_works_in_a_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("mtopt-*.whl")
    assert wheel.name.startswith(f"mtopt-{mtopt.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("mtopt/rules.py", "mtopt/states.py", "mtopt/_src/micro_batch.py",
                   "mtopt/pareto/__init__.py", "mtopt/runner/cli.py", "mtopt/tasks/__init__.py"):
        assert module in names, module
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/", "docs/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies (jax, optax, flax, chex, numpy) from this environment, not mtopt.
    (pathlib.Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    smoke = subprocess.run(
        [str(python), "-c", SMOKE.format(root=str(ROOT), version=mtopt.__version__)],
        capture_output=True, text=True, cwd=work, timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert smoke.stdout.strip() == f"ok {mtopt.__version__}"
    cli = subprocess.run([str(env_dir / "bin" / "mtopt-bench"), "--list-methods"],
                         capture_output=True, text=True, cwd=work, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "upgrad" in cli.stdout and "mgda" in cli.stdout
