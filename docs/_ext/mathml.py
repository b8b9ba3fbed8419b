"""Render the documentation's math as MathML at build time: no script, no network.

Browsers display MathML natively (MathML Core: Chromium 109+, Firefox, Safari), so a
page shows its formulas offline and in sandboxed viewers, where MathJax from a CDN
would leave raw LaTeX. The conversion is ``latex2mathml``'s; a formula it cannot
convert fails the build with the formula and its page, rather than shipping raw TeX.
"""

from __future__ import annotations

import re

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

# Macros latex2mathml does not know, rewritten into ones it does.
_REWRITES = {
    r"\tfrac": r"\frac",
    r"\dfrac": r"\frac",
    r"\operatorname{sg}": r"\mathrm{sg}",
}


# Commands latex2mathml passes through as text in some contexts (after \Big, ...): the
# character they stand for.
_SYMBOLS = {
    r"\langle": "&#x027E8;", r"\rangle": "&#x027E9;", r"\lVert": "&#x02016;",
    r"\rVert": "&#x02016;", r"\arg": "arg",
}
_LEFT_OVER = re.compile(r">(\\[A-Za-z]+)<")


def _mathml(latex: str, display: str, node: nodes.Node) -> str:
    for old, new in _REWRITES.items():
        latex = latex.replace(old, new)
    try:
        mathml = convert(latex, display=display)
    except Exception as err:  # noqa: BLE001 - any converter failure is a build error
        raise ExtensionError(
            f"mathml: cannot convert {latex!r} ({node.source}:{node.line}): {err}"
        ) from err
    for command, text in _SYMBOLS.items():
        mathml = mathml.replace(f">{command}<", f">{text}<")
    left = _LEFT_OVER.findall(mathml)
    if left:
        raise ExtensionError(
            f"mathml: {latex!r} ({node.source}:{node.line}) leaves {left} unconverted."
        )
    return mathml


def visit_math(self, node: nodes.Node) -> None:
    self.body.append(f'<span class="math">{_mathml(node.astext(), "inline", node)}</span>')
    raise nodes.SkipNode


def visit_displaymath(self, node: nodes.Node) -> None:
    latex = node.astext()
    if node.get("nowrap"):
        latex = latex.strip()
    self.body.append(f'<div class="math">{_mathml(latex, "block", node)}</div>\n')
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict:
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
