"""A name registry of every method, so scripts can sweep them by name."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional, Union

from mtopt._src import base
from mtopt._src.methods import (
    aligned_mtl, cagrad, config_method, db_mtl, dualproj, dwa, epo, excess_mtl, fairgrad, famo,
    gls, graddrop, gradnorm, gradvac, imtl, linear, mgda, moco, nash_mtl, pcgrad, pmtl, rlw,
    scalarization, uncertainty, upgrad,
)


@dataclasses.dataclass(frozen=True)
class Condition:
    """A property that holds only under stated conditions on the options.

    Attributes:
      text: the condition as the methods table prints it, e.g. ``"c >= 1"``.
      options: option sets satisfying it, on which the property tests check
        the property (e.g. ``({"c": 1.0}, {"c": 4.0})``).

    Example:
      >>> import mtopt
      >>> mtopt.method_info("cagrad").non_conflicting.text
      'c >= 1'
    """

    text: str
    options: tuple[dict[str, Any], ...]


Claim = Union[None, bool, Condition]


def claim_option_sets(claim: Claim) -> tuple[dict[str, Any], ...]:
    """The option sets under which a claimed property must hold: ``({},)`` for an
    unconditional ``True``, the condition's sets for a :class:`Condition`, else ``()``."""
    if claim is True:
        return ({},)
    if isinstance(claim, Condition):
        return claim.options
    return ()


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about a method.

    Attributes:
      name: registry name, as accepted by :func:`mtopt.method`.
      factory: the factory function (its keyword arguments are the options).
      needs: what the method reads (:class:`mtopt.Needs`).
      reference: paper (authors, venue, year).
      non_conflicting: the direction never conflicts with a task gradient
        (``J d >= 0``): True, False, a :class:`Condition` on the options under
        which it holds (CAGrad: ``c >= 1``), or ``None`` for loss-only methods,
        which never see gradients.
      permutation_invariant: permuting the tasks permutes the weights and keeps the
        direction; ``None`` where it only holds in distribution (random order).
      linear_under_scaling: the direction for ``diag(c) J`` is linear in ``c > 0``;
        ``None`` for loss-only methods.
      stateful: the weights depend on earlier steps (a state that only carries
        solver diagnostics or the task count does not count).
      stochastic: draws randomness from the step's key.
      preference: reads a preference vector.

    Example:
      >>> import mtopt
      >>> info = mtopt.method_info("upgrad")
      >>> info.needs, info.non_conflicting, info.stateful
      (<Needs.GRAMIAN: 'gramian'>, True, False)
    """

    name: str
    factory: Callable[..., base.Weighting]
    needs: base.Needs
    reference: str
    non_conflicting: Claim
    permutation_invariant: Optional[bool]
    linear_under_scaling: Optional[bool]
    stateful: bool
    stochastic: bool = False
    preference: bool = False

    def options(self) -> dict[str, Any]:
        """The factory's options and their defaults (``inspect.Parameter.empty`` for
        a required option)."""
        return {
            name: p.default
            for name, p in inspect.signature(self.factory).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def required_options(self) -> tuple[str, ...]:
        """The options the factory cannot do without (no default)."""
        return tuple(k for k, v in self.options().items() if v is inspect.Parameter.empty)


_L, _G, _J = base.Needs.LOSSES, base.Needs.GRAMIAN, base.Needs.JACOBIAN

_INFOS = [
    # name, factory, needs, reference, NC, PI, LS, stateful, stochastic, preference
    MethodInfo("linear", linear.linear, _L, "Keras loss_weights", None, True, None, False),
    MethodInfo("equal", linear.equal, _L, "LibMTL EW", None, True, None, False),
    MethodInfo("log", linear.log_scalarization, _L, "Navon et al., ICML 2022 (baseline)", None, True, None, False),
    MethodInfo("dwa", dwa.dwa, _L, "Liu, Johns & Davison, CVPR 2019", None, True, None, True),
    MethodInfo("uncertainty", uncertainty.uncertainty, _L, "Kendall, Gal & Cipolla, CVPR 2018", None, True, None, True),
    MethodInfo("rlw", rlw.rlw, _L, "Lin et al., TMLR 2022", None, None, None, False, stochastic=True),
    MethodInfo("gls", gls.gls, _L, "Chennupati et al., CVPRW 2019", None, True, None, False),
    MethodInfo("famo", famo.famo, _L, "Liu, Feng, Stone & Liu, NeurIPS 2023", None, True, None, True),
    MethodInfo("mgda", mgda.mgda, _G, "Désidéri 2012; Sener & Koltun, NeurIPS 2018", True, True, False, False),
    MethodInfo("pcgrad", pcgrad.pcgrad, _G, "Yu et al., NeurIPS 2020", False, None, True, False, stochastic=True),
    MethodInfo("gradvac", gradvac.gradvac, _G, "Wang et al., ICLR 2021", False, None, False, True, stochastic=True),
    MethodInfo("cagrad", cagrad.cagrad, _G, "Liu et al., NeurIPS 2021", Condition("c >= 1", ({"c": 1.0}, {"c": 4.0})), True, False, False),
    MethodInfo("imtl_g", imtl.imtl_g, _G, "Liu et al., ICLR 2021", False, True, False, False),
    MethodInfo("imtl_l", imtl.imtl_l, _L, "Liu et al., ICLR 2021", None, True, None, True),
    MethodInfo("imtl", imtl.imtl, _G, "Liu et al., ICLR 2021", False, True, False, True),
    MethodInfo("nash_mtl", nash_mtl.nash_mtl, _G, "Navon et al., ICML 2022", True, True, False, True),
    MethodInfo("aligned_mtl", aligned_mtl.aligned_mtl, _G, "Senushkin et al., CVPR 2023", False, True, False, False),
    MethodInfo("upgrad", upgrad.upgrad, _G, "Quinton & Rey, 2024 (TorchJD)", True, True, True, False),
    MethodInfo("dualproj", dualproj.dualproj, _G, "Quinton & Rey, 2024 (TorchJD)", True, True, False, False),
    MethodInfo("config", config_method.config, _G, "Liu et al., ICLR 2025", False, True, True, False),
    MethodInfo("fairgrad", fairgrad.fairgrad, _G, "Ban & Ji, ICML 2024", False, True, False, False),
    MethodInfo("gradnorm", gradnorm.gradnorm, _G, "Chen et al., ICML 2018", False, True, False, True),
    MethodInfo("moco", moco.moco, _J, "Fernando et al., ICLR 2023", False, True, False, True),
    MethodInfo("db_mtl", db_mtl.db_mtl, _J, "Lin et al., 2023", False, True, False, True),
    MethodInfo("excess_mtl", excess_mtl.excess_mtl, _J, "He et al., ICML 2024", False, True, False, True),
    MethodInfo("graddrop", graddrop.graddrop, _J, "Chen et al., NeurIPS 2020", False, None, False, False, stochastic=True),
    MethodInfo("preference_linear", scalarization.preference_linear, _L, "linear scalarisation with a preference", None, True, None, False, preference=True),
    MethodInfo("tchebycheff", scalarization.tchebycheff, _L, "Bowman 1976; Miettinen 1999", None, True, None, False, preference=True),
    MethodInfo("stch", scalarization.smooth_tchebycheff, _L, "Lin et al., ICML 2024", None, True, None, False, preference=True),
    MethodInfo("pbi", scalarization.pbi, _L, "Zhang & Li, IEEE TEC 2007", None, True, None, False, preference=True),
    MethodInfo("cosmos", scalarization.cosmos, _L, "Ruchte & Grabocka, ICDM 2021", None, True, None, False, preference=True),
    MethodInfo("epo", epo.epo, _G, "Mahapatra & Rajan, ICML 2020", False, False, False, False, preference=True),
    MethodInfo("pmtl", pmtl.pmtl, _G, "Lin et al., NeurIPS 2019", False, None, False, True, preference=True),
]
_REGISTRY = {info.name: info for info in _INFOS}


def method_names() -> tuple[str, ...]:
    """All registered method names, in registry order.

    Example:
      >>> import mtopt
      >>> "mgda" in mtopt.method_names() and "upgrad" in mtopt.method_names()
      True
    """
    return tuple(_REGISTRY)


def method_info(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of a registered method (what it needs, its properties).

    Example:
      >>> import mtopt
      >>> info = mtopt.method_info("cagrad")
      >>> info.reference, info.needs.value
      ('Liu et al., NeurIPS 2021', 'gramian')
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown method {name!r}. Valid names: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def method(name: str, **options: Any) -> base.Weighting:
    """Build a method by registry name, with its options as keyword arguments.

    Args:
      name: one of :func:`mtopt.method_names`.
      **options: the factory's arguments (see its docstring).

    Returns:
      The :class:`mtopt.Weighting`.

    Raises:
      ValueError: for an unknown name or an option the method does not take,
        listing the valid ones.

    Example:
      >>> import mtopt
      >>> mtopt.method("mgda", normalization="l2").name
      'mgda'
    """
    info = method_info(name)
    valid = info.options()

    def listed() -> str:
        return ", ".join(
            k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in valid.items()
        ) or "none"

    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"Method {name!r} has no option(s) {unknown}. Valid options: {listed()}.")
    missing = [k for k in info.required_options() if k not in options]
    if missing:
        raise ValueError(
            f"Method {name!r} needs the option(s) {missing}, which have no default "
            f"(options: {listed()}); e.g. mtopt.method({name!r}, {missing[0]}=...)."
        )
    return info.factory(**options)


def methods_table() -> str:
    """A markdown table of every method: reference, needs and properties.

    Example:
      >>> import mtopt
      >>> mtopt.methods_table().splitlines()[0].split(" | ")[:3]
      ['| name', 'reference', 'needs']
    """

    def mark(v: Claim) -> str:
        if isinstance(v, Condition):
            return f"if {v.text}"
        return "–" if v is None else ("yes" if v else "no")

    rows = [
        "| name | reference | needs | non-conflicting | permutation invariant | "
        "linear under scaling | stateful | random | preference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i in _INFOS:
        rows.append(
            f"| `{i.name}` | {i.reference} | {i.needs.value} | {mark(i.non_conflicting)} | "
            f"{mark(i.permutation_invariant)} | {mark(i.linear_under_scaling)} | "
            f"{mark(i.stateful)} | {mark(i.stochastic)} | {mark(i.preference)} |"
        )
    return "\n".join(rows)
