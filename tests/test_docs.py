"""The documentation: docstring examples, a warning-free Sphinx build, runnable pages.

- every public function and class (``__all__`` of mtopt and of its public submodules)
  has a docstring with an ``Example:`` section;
- ``python -m sphinx -W --keep-going`` builds the HTML site without a single warning,
  with a page for every public name;
- every ```python block of the markdown pages in ``docs/`` runs, in order, in one fresh
  namespace per page (as ``test_readme.py`` does for the README).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_MODULES = (
    "mtopt", "mtopt.rules", "mtopt.states", "mtopt.pareto", "mtopt.problems", "mtopt.plots",
    "mtopt.tasks", "mtopt.runner", "mtopt.checkpoint",
)
# Written in parallel with the docs: checked as soon as their file exists. A module whose
# file exists but does not import is an error, not a skip.
OPTIONAL_MODULES = ("mtopt.tasks", "mtopt.runner", "mtopt.checkpoint")
EXAMPLE_SECTION = re.compile(r"^\s*Examples?:\s*$", re.MULTILINE)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
PAGES = sorted(DOCS.glob("*.md"))


def _public_modules() -> list:
    modules = []
    for name in PUBLIC_MODULES:
        if name in OPTIONAL_MODULES and importlib.util.find_spec(name) is None:
            continue
        modules.append(importlib.import_module(name))
    return modules


def _own_doc(obj) -> str:
    """The object's own docstring (a class does not inherit its base's)."""
    if inspect.isclass(obj):
        return obj.__dict__.get("__doc__") or ""
    return obj.__doc__ or ""


def test_every_public_function_and_class_has_an_example():
    offenders = []
    for module in _public_modules():
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # submodules, constants
            if not EXAMPLE_SECTION.search(_own_doc(obj)):
                offenders.append(f"{module.__name__}.{name}")
    assert not offenders, (
        f"{len(offenders)} public functions/classes have no 'Example:' section in their "
        "docstring: " + ", ".join(offenders)
    )


def test_api_reference_lists_every_public_name():
    """api/mtopt.rst groups mtopt's names by hand: none may be forgotten."""
    import mtopt

    listed = set(re.findall(r"^   (\w+)$", (DOCS / "api" / "mtopt.rst").read_text(), re.M))
    modules = {name for name in mtopt.__all__ if inspect.ismodule(getattr(mtopt, name))}
    missing = sorted(set(mtopt.__all__) - modules - listed)
    assert not missing, f"add to an autosummary list of docs/api/mtopt.rst: {missing}"
    unknown = sorted(listed - set(mtopt.__all__))
    assert not unknown, f"docs/api/mtopt.rst lists names not in mtopt.__all__: {unknown}"
    index = (DOCS / "api" / "index.rst").read_text()
    for name in PUBLIC_MODULES[1:]:
        assert re.search(rf"^   {re.escape(name)}$", index, re.M), f"{name} not in api/index.rst"


def test_examples_page_includes_every_example_script():
    page = (DOCS / "examples.md").read_text()
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert f"../examples/{script.name}" in page, f"docs/examples.md misses {script.name}"


def test_sphinx_html_build_is_warning_free(tmp_path):
    out = tmp_path / "html"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    problems = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0 and not problems, (
        f"sphinx exited with {proc.returncode}:\n{proc.stderr[-6000:]}"
    )
    for page in [p.stem for p in PAGES] + ["api/index", "api/mtopt"]:
        assert (out / f"{page}.html").is_file(), f"{page}.html was not built"
    # Offline: no page loads a remote script, math is MathML (no TeX left for a script).
    formulas = 0
    for html in out.rglob("*.html"):
        text = html.read_text()
        remote = re.findall(r'<script[^>]*src="(?:https?:)?//[^"]+"', text)
        assert not remote, f"{html.name} loads remote scripts: {remote}"
        assert not re.search(r"\\\(|\\\[", text), f"{html.name} has raw TeX delimiters"
        for math in re.findall(r"<math.*?</math>", text, flags=re.S):
            formulas += 1
            assert not re.search(r"\\[A-Za-z]", math), f"{html.name}: TeX left in {math[:200]}"
    assert formulas > 500, formulas  # the pages and docstrings are full of math
    assert "<math" in (out / "gramian_methods.html").read_text()
    generated = out / "api" / "generated"
    missing = []
    for module in _public_modules():
        if module.__name__ != "mtopt":
            if not (generated / f"{module.__name__}.html").is_file():
                missing.append(module.__name__)
        for name in module.__all__:
            if inspect.ismodule(getattr(module, name)):
                continue
            if not (generated / f"{module.__name__}.{name}.html").is_file():
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"no API page for: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_page_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = PYTHON_BLOCK.findall(page.read_text())
    if not blocks:
        pytest.skip(f"{page.name} has no python blocks")
    import jax

    import types

    monkeypatch.chdir(tmp_path)  # pages that write files write them here
    # A real module, so that dataclass-based classes (flax.linen) defined on a page find it.
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict = module.__dict__
    # Page code is user code: JAX's default promotion rules, not the suite's strict ones.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for index, block in enumerate(blocks):
            code = compile(block, f"{page.name} (python block {index + 1})", "exec")
            exec(code, namespace)  # noqa: S102
