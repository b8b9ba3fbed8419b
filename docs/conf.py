"""Sphinx configuration of the mtopt documentation.

Build by hand (offline; nothing is fetched):

    python -m sphinx -W --keep-going -b html docs docs/_build/html

API stubs are generated at build time by autosummary into ``docs/api/generated``
(git-ignored, wiped at the start of every build so renamed or removed names leave
no stale pages behind).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
# The docs import mtopt (and jax) to read docstrings: keep JAX quiet and on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import mtopt  # noqa: E402

project = "mtopt"
author = "mtopt developers"
copyright = "mtopt developers"
release = mtopt.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "mathml",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- offline -------------------------------------------------------------------------
# No intersphinx: the build must not touch the network. Math is rendered to MathML at build
# time (docs/_ext/mathml.py), so the pages load no script and show formulas offline.
html_math_renderer = "mathml"

# --- autosummary / autodoc -----------------------------------------------------------
GENERATED = DOCS / "api" / "generated"
shutil.rmtree(GENERATED, ignore_errors=True)  # no stale stubs from earlier builds
autosummary_generate = True
autosummary_generate_overwrite = True
autosummary_imported_members = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
add_module_names = False

# --- napoleon (Google style) ---------------------------------------------------------
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields: no duplicate attribute entries
napoleon_use_rtype = False
napoleon_attr_annotations = False  # the Attributes sections already say (T,), (T, T), ...

# --- MyST (markdown pages) -----------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- HTML ----------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"mtopt {release}"
html_static_path = ["_static"]
html_css_files = ["mtopt.css"]
html_theme_options = {
    "description": "Multi-task and multi-objective gradient methods for JAX",
    "fixed_sidebar": True,
    "show_relbars": True,
}
pygments_style = "sphinx"
