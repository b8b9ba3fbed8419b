"""Hypothesis property tests over every registered method.

Each generated case is a Jacobian ``J`` (T x P) with a known structure: a
rank-deficient product, zero rows, exactly duplicated and exactly opposite
rows, per-task scales ``10^e_i`` with ``e_i`` anywhere in [-12, 12], positive
losses spread over many orders of magnitude, a preference vector (uniform,
random, a vertex of the simplex or sparse), fed in float32 or bfloat16. Every
method runs two steps of ``aggregate`` (the state threaded through), jitted once
per (method, T, dtype) and cached; the checks:

- weights, directions and the state after two steps are finite;
- the weight conventions the docstrings pin (on the simplex, summing to T, ...)
  see ``WEIGHT_CLAIMS``;
- the registry's claims: non-conflicting (``J d >= -tol * max_i ||g_i||^2``),
  permutation invariance (permuting the tasks permutes the weights and keeps the
  direction), linearity under per-task scaling.

The properties are checked against the inputs the method actually saw (the
bfloat16-rounded Jacobian in float64), so bfloat16 rounding is not mistaken for a
violation; tolerances are those a float32 solver on a Gramian normalised by its
largest diagonal can reach.

``max_examples`` is small in the default run (one jit per new (T, dtype) pair
dominates the cost) and large in the slow run. Each method's passing cases are
counted; the slow run ends with ``test_zz_case_counts_summary``, which prints
``method: N cases`` lines and writes them to ``<tmp>/mtopt_hypothesis_counts.json``::

    python -m pytest tests/test_hypothesis_methods.py -m slow -n 0 -s -q
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import tempfile
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtopt
from mtopt._src import aggregate as aggregate_lib
from mtopt._src.registry import claim_option_sets

NAMES = mtopt.method_names()
TASK_COUNTS = (1, 2, 3, 4, 5, 7, 8, 16, 32, 64)
P_MAX = 24  # every Jacobian is zero-padded to P_MAX columns: one jit per (method, T, dtype)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEFAULT_EXAMPLES = 8
SLOW_EXAMPLES = 1000

COMMON = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)

# Weight conventions pinned in the methods' docstrings (the registry has no flag
# for them): "sum1" on the simplex; "sumT" non-negative, summing to T; "ones";
# "at_least_1" non-negative with sum >= 1; "sum1_or_zero" summing to 1, or all 0
# in the degenerate cases the docstring names; "pref" equal to the preference;
# "active_pref" non-negative with sum <= 1 (the active task's preference).
WEIGHT_CLAIMS = {
    "equal": "ones",
    "rlw": "sum1",
    "famo": "sum1",
    "mgda": "sum1",
    "moco": "sum1",
    "dwa": "sumT",
    "gradnorm": "sumT",
    "excess_mtl": "sumT",
    "epo": "sumT",
    "upgrad": "at_least_1",
    "dualproj": "at_least_1",
    "imtl_g": "sum1_or_zero",
    "preference_linear": "pref",
    "tchebycheff": "active_pref",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One generated input; its repr is what hypothesis prints for a failure."""

    name: str
    num_tasks: int
    dim: int
    rank: int
    dtype: str
    scale_center: float  # log10 of the typical task-gradient scale
    scale_spread: float  # per-task log10 scales spread uniformly over this width
    loss_center: float
    loss_spread: float
    zero_rows: int
    duplicates: int
    opposites: int
    preference: str  # "uniform" | "random" | "vertex" | "sparse"
    seed: int


@dataclasses.dataclass(frozen=True)
class KnownFailure:
    """A property that does not hold on part of the input space, reported to the lead.

    ``applies(case)`` says where the property is not checked by the hypothesis
    test; ``case`` is hypothesis' minimal failing case, kept as an
    ``xfail(strict=True)`` regression test so a fix is noticed.
    """

    prop: str
    applies: Callable[[Case], bool]
    case: Case
    reason: str


def no_common_descent(case: Case) -> bool:
    """True when the non-zero task gradients admit no direction improving them all:
    the min-norm point of their convex hull is (numerically) 0, e.g. an exactly
    opposite pair. Nash-MTL's bargaining problem ``G a = 1 / a`` has no solution then."""
    from scipy.optimize import nnls

    jac = make_arrays(case).jac
    jac = jac[np.any(jac != 0.0, axis=1)]
    if jac.shape[0] < 2:
        return False
    jac = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    big = 1e3  # min ||J^T l||^2 + big^2 (1^T l - 1)^2 over l >= 0: the simplex constraint
    lhs = np.vstack([jac.T, big * np.ones((1, jac.shape[0]))])
    rhs = np.concatenate([np.zeros(jac.shape[1]), [big]])
    lam, _ = nnls(lhs, rhs)
    return float(np.linalg.norm(jac.T @ lam)) < 1e-3


def norm_spread(case: Case) -> float:
    """log10 of the largest over the smallest non-zero task-gradient norm."""
    norms = np.linalg.norm(make_arrays(case).jac, axis=1)
    norms = norms[norms > 0]
    return float(np.log10(norms.max() / norms.min())) if norms.size else 0.0


def rank_deficient_and_spread(case: Case) -> bool:
    """A rank-deficient Gramian (dependent or opposite rows) with task-gradient norms
    spread over more than two orders of magnitude."""
    jac = make_arrays(case).jac
    nonzero = jac[np.any(jac != 0.0, axis=1)]
    rank = np.linalg.matrix_rank(nonzero) if nonzero.size else 0
    return rank < nonzero.shape[0] and norm_spread(case) > 2.0


def dependent_rows(case: Case) -> bool:
    """The non-zero task gradients are linearly dependent (rank below their count)."""
    jac = make_arrays(case).jac
    nonzero = jac[np.any(jac != 0.0, axis=1)]
    return bool(nonzero.size) and np.linalg.matrix_rank(nonzero) < nonzero.shape[0]


IMTL_FLOAT32 = (
    "{}: permutation changes the direction by ~1.5% when the Gramian is rank deficient "
    "with exactly opposite rows and task norms spread over 10^3..10^5 (float32 "
    "pseudo-inverse of an ill-conditioned G; float64 is invariant: weights "
    "(-0.0907, 0.0907, 1, 30.18, -30.18) in both orders, float32 1.0% off in one order)"
)

# Properties reported to the lead that do not hold on part of the input space.
KNOWN_FAILURES: dict[str, list[KnownFailure]] = {
    "nash_mtl": [
        KnownFailure(
            prop="non_conflicting",
            applies=no_common_descent,
            case=Case("nash_mtl", 2, 4, 1, "float32", -1.0, 0.0, 0.0, 0.0, 0, 0, 0, "uniform", 0),
            reason="nash_mtl: with no common descent direction (here two exactly opposite "
            "collinear gradients) G a = 1/a has no solution; the weights blow up (~9e4) and "
            "the direction is float32 cancellation noise conflicting with one task at "
            "5e-3 max||g||^2",
        ),
    ],
    "pcgrad": [
        KnownFailure(
            prop="linear_under_scaling",
            applies=lambda case: norm_spread(case) > 3.0,
            case=Case("pcgrad", 7, 4, 3, "float32", 0.0, 5.0, 0.0, 0.0, 0, 0, 0, "uniform", 8397),
            reason="pcgrad: eps=1e-8 is added to ||g_j||^2 / max_k ||g_k||^2, so a task whose "
            "gradient is more than ~1e4 times smaller than the largest is (partly) not "
            "projected against, and the direction is not linear under per-task scaling "
            "(error 75 vs |d| ~ 1e4 here)",
        ),
    ],
    "config": [
        KnownFailure(
            prop="linear_under_scaling",
            applies=dependent_rows,
            case=Case("config", 3, 4, 1, "bfloat16", 0.0, 0.0, 0.0, 0.0, 0, 0, 0, "uniform", 0),
            reason="config: with linearly dependent gradients the cosine matrix is singular "
            "and its pseudo-inverse drops eigenvalues below T eps; rounding the scaled "
            "Gramian in float32 or bfloat16 moves those eigenvalues across the cutoff, so "
            "the unit direction changes with the scaling (float64 holds it, checked by "
            "tests/test_registry.py at T = 64; 3 collinear "
            "bfloat16 gradients: error 1.2 vs |d| ~ 1)",
        ),
    ],
    "imtl_g": [
        KnownFailure(
            prop="permutation",
            applies=rank_deficient_and_spread,
            case=Case("imtl_g", 5, 4, 2, "float32", 0.0, 6.0, 0.0, 0.0, 0, 0, 2, "uniform", 172),
            reason=IMTL_FLOAT32.format("imtl_g"),
        ),
    ],
    "imtl": [
        KnownFailure(
            prop="permutation",
            applies=rank_deficient_and_spread,
            case=Case("imtl", 5, 4, 2, "float32", 0.0, 6.0, 0.0, 0.0, 0, 0, 2, "uniform", 172),
            reason=IMTL_FLOAT32.format("imtl"),
        ),
    ],
}


def known_failure(case: Case, prop: str) -> Optional[KnownFailure]:
    for failure in KNOWN_FAILURES.get(case.name, []):
        if failure.prop == prop and failure.applies(case):
            return failure
    return None


@st.composite
def cases(draw: Any, name: str) -> Case:
    t = draw(st.sampled_from(TASK_COUNTS))
    dim = draw(st.integers(4, P_MAX))
    return Case(
        name=name,
        num_tasks=t,
        dim=dim,
        rank=draw(st.integers(1, min(t, dim))),
        dtype=draw(st.sampled_from(tuple(DTYPES))),
        scale_center=draw(st.floats(-12.0, 12.0, allow_nan=False)),
        scale_spread=draw(st.floats(0.0, 24.0, allow_nan=False)),
        loss_center=draw(st.floats(-8.0, 8.0, allow_nan=False)),
        loss_spread=draw(st.floats(0.0, 16.0, allow_nan=False)),
        zero_rows=draw(st.integers(0, t)),
        duplicates=draw(st.integers(0, t // 2)),
        opposites=draw(st.integers(0, t // 2)),
        preference=draw(st.sampled_from(("uniform", "random", "vertex", "sparse"))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclasses.dataclass
class Arrays:
    jac: np.ndarray  # (T, P_MAX) float64, before casting to the case dtype
    losses: np.ndarray  # (T,)
    losses2: np.ndarray  # (T,) second step
    preference: np.ndarray  # (T,) on the simplex
    c1: np.ndarray  # (T, 1) positive per-task scalings for the linearity check
    c2: np.ndarray
    perm: np.ndarray  # (T,) a permutation of the tasks


def make_arrays(case: Case) -> Arrays:
    rng = np.random.default_rng(case.seed)
    t, p = case.num_tasks, case.dim
    jac = rng.normal(size=(t, case.rank)) @ rng.normal(size=(case.rank, p))
    exps = np.clip(case.scale_center + case.scale_spread * (rng.uniform(size=t) - 0.5), -12, 12)
    jac = jac * 10.0 ** exps[:, None]
    for _ in range(case.duplicates if t > 1 else 0):
        i, j = rng.choice(t, size=2, replace=False)
        jac[j] = jac[i]
    for _ in range(case.opposites if t > 1 else 0):
        i, j = rng.choice(t, size=2, replace=False)
        jac[j] = -jac[i]
    jac[rng.permutation(t)[: case.zero_rows]] = 0.0
    padded = np.zeros((t, P_MAX))
    padded[:, :p] = jac

    def losses() -> np.ndarray:
        e = np.clip(case.loss_center + case.loss_spread * (rng.uniform(size=t) - 0.5), -8, 8)
        return 10.0**e

    if case.preference == "uniform":
        pref = np.full(t, 1.0 / t)
    elif case.preference == "vertex":
        pref = np.zeros(t)
        pref[rng.integers(t)] = 1.0
    else:
        pref = rng.dirichlet(np.ones(t))
        if case.preference == "sparse" and t > 1:
            pref[rng.permutation(t)[: t // 2]] = 0.0
            pref = pref / pref.sum()
    return Arrays(
        jac=padded,
        losses=losses(),
        losses2=losses(),
        preference=pref,
        c1=rng.uniform(0.5, 2.0, size=(t, 1)),
        c2=rng.uniform(0.5, 2.0, size=(t, 1)),
        perm=rng.permutation(t),
    )


def build(name: str, num_tasks: int, extra: tuple = ()) -> mtopt.Weighting:
    options: dict[str, Any] = dict(extra)
    if name == "linear":
        options["weights"] = [1.0] * num_tasks
    if name == "dwa":
        options.setdefault("steps_per_epoch", 1)
    if name == "pmtl":
        options["preferences"] = jnp.eye(num_tasks)
    return mtopt.method(name, **options)


@functools.lru_cache(maxsize=None)
def runner(name: str, num_tasks: int, dtype_name: str, extra: tuple = ()):
    """``run(jac, losses, losses2, key, preference)`` jitted once per (method, T, dtype,
    options).

    Two steps of ``aggregate`` with the state threaded through; returns both
    steps' directions and weights and the final state.
    """
    method = build(name, num_tasks, extra)
    uses_preference = mtopt.method_info(name).preference
    dtype = DTYPES[dtype_name]

    def run(jac, losses, losses2, key, preference):
        state = method.init(num_tasks, {"w": jnp.zeros((P_MAX,), dtype)})
        pref = preference if uses_preference else None
        k1, k2 = jax.random.split(key)
        tree, mask = {"w": jac}, {"w": True}
        a1 = aggregate_lib.aggregate(
            method, state, losses, tree, mask=mask, key=k1, preference=pref
        )
        a2 = aggregate_lib.aggregate(
            method, a1.state, losses2, tree, mask=mask, key=k2, preference=pref
        )
        return a1.direction["w"], a1.weights, a2.direction["w"], a2.weights, a2.state

    return jax.jit(run)


@dataclasses.dataclass
class Output:
    jac: np.ndarray  # the Jacobian the method saw, float64
    d1: np.ndarray
    w1: np.ndarray
    d2: np.ndarray
    w2: np.ndarray
    state_leaves: list[np.ndarray]


def run_case(case: Case, arrays: Arrays, jac: np.ndarray, perm: Optional[np.ndarray] = None,
             extra: tuple = ()):
    dtype = DTYPES[case.dtype]
    losses, losses2, pref = arrays.losses, arrays.losses2, arrays.preference
    if perm is not None:
        jac, losses, losses2, pref = jac[perm], losses[perm], losses2[perm], pref[perm]
    jac_in = jnp.asarray(jac, dtype)
    out = runner(case.name, case.num_tasks, case.dtype, extra)(
        jac_in,
        jnp.asarray(losses, dtype),
        jnp.asarray(losses2, dtype),
        jax.random.key(case.seed),
        jnp.asarray(pref, jnp.float32),
    )
    d1, w1, d2, w2, state = jax.device_get(out)
    f64 = lambda x: np.asarray(np.asarray(x, np.float32), np.float64)  # noqa: E731
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    return Output(
        jac=f64(jac_in), d1=f64(d1), w1=f64(w1), d2=f64(d2), w2=f64(w2), state_leaves=leaves
    )


def tolerance(case: Case) -> float:
    """Relative tolerance: float32 solvers on normalised Gramians, looser for
    bfloat16 directions (8-bit mantissa) and for many tasks."""
    tol = 2e-2 if case.dtype == "bfloat16" else 2e-3
    return tol * (2.0 if case.num_tasks >= 32 else 1.0)


def check_finite(case: Case, out: Output) -> None:
    for label, x in (("weights", out.w1), ("direction", out.d1),
                     ("weights (step 2)", out.w2), ("direction (step 2)", out.d2)):
        assert np.all(np.isfinite(x)), f"{case.name}: non-finite {label}: {x}"
    for leaf in out.state_leaves:
        if np.issubdtype(leaf.dtype, np.inexact):
            assert np.all(np.isfinite(np.asarray(leaf, np.float64))), (
                f"{case.name}: non-finite state leaf {leaf}"
            )
    assert out.w1.shape == (case.num_tasks,) and out.d1.shape == (P_MAX,)


def check_weight_claim(case: Case, arrays: Arrays, w: np.ndarray) -> None:
    claim = WEIGHT_CLAIMS.get(case.name)
    if claim is None:
        return
    t = case.num_tasks
    tol = 1e-3 * (2.0 if t >= 32 else 1.0)
    total = w.sum()
    if claim != "sum1_or_zero":
        assert np.all(w >= -tol * max(1.0, np.abs(w).max())), f"{case.name}: negative weights {w}"
    if claim == "ones":
        np.testing.assert_allclose(w, 1.0, rtol=1e-6)
    elif claim == "sum1":
        assert abs(total - 1.0) <= tol, f"{case.name}: weights sum to {total}, not 1: {w}"
    elif claim == "sumT":
        assert abs(total - t) <= tol * t, f"{case.name}: weights sum to {total}, not T={t}: {w}"
    elif claim == "at_least_1":
        assert total >= 1.0 - tol, f"{case.name}: weights sum to {total} < 1: {w}"
    elif claim == "sum1_or_zero":
        assert abs(total - 1.0) <= tol or np.all(np.abs(w) <= tol), (
            f"{case.name}: weights sum to {total}, neither 1 nor all zero: {w}"
        )
    elif claim == "pref":
        np.testing.assert_allclose(w, arrays.preference, atol=1e-6)
    elif claim == "active_pref":
        assert total <= 1.0 + tol, f"{case.name}: weights sum to {total} > 1: {w}"


def gradient_scale(jac: np.ndarray) -> float:
    return float(np.sqrt(np.max(np.sum(jac * jac, axis=1)))) if jac.size else 0.0


def check_non_conflicting(case: Case, jac: np.ndarray, d: np.ndarray, step: str) -> None:
    gmax = gradient_scale(jac)
    dots = jac @ d
    bound = -tolerance(case) * gmax * gmax
    assert np.all(dots >= bound), (
        f"{case.name}: direction conflicts with a task gradient ({step}): "
        f"min_i <g_i, d> = {dots.min():.3e} < {bound:.3e} (max ||g_i|| = {gmax:.3e}); "
        f"J d = {dots}"
    )


def direction_scale(jac: np.ndarray, *weights: np.ndarray) -> float:
    """The size a direction's rounding and solver errors scale with."""
    norms = np.sqrt(np.sum(jac * jac, axis=1))
    return max([float(np.abs(w) @ norms) for w in weights] + [float(norms.max(initial=0.0))])


def buffer_scale(case: Case, out: Output, w: np.ndarray) -> float:
    """For methods whose direction combines gradient buffers kept in the state
    (MoCo, DB-MTL): ``sum_i |w_i| ||y_i||`` over the (T, P) buffers."""
    if build(case.name, case.num_tasks).combine is None:
        return 0.0
    scale = 0.0
    for leaf in out.state_leaves:
        if leaf.shape == (case.num_tasks, P_MAX):
            rows = np.linalg.norm(np.asarray(leaf, np.float64), axis=1)
            scale = max(scale, float(np.abs(w) @ rows))
    return scale


def check_permutation(case: Case, arrays: Arrays, out: Output) -> None:
    perm = arrays.perm
    permuted = run_case(case, arrays, arrays.jac, perm)
    for step, d, dp, w in (("step 1", out.d1, permuted.d1, out.w1),
                           ("step 2", out.d2, permuted.d2, out.w2)):
        atol = tolerance(case) * max(
            direction_scale(out.jac, w), buffer_scale(case, out, w), np.abs(d).max()
        )
        err = np.abs(dp - d).max()
        assert err <= atol, (
            f"{case.name}: permuting the tasks by {perm.tolist()} changed the direction "
            f"({step}) by {err:.3e} > {atol:.3e}"
        )


def check_linear_under_scaling(case: Case, arrays: Arrays) -> None:
    jac = arrays.jac
    o1 = run_case(case, arrays, arrays.c1 * jac)
    o2 = run_case(case, arrays, arrays.c2 * jac)
    o12 = run_case(case, arrays, (arrays.c1 + arrays.c2) * jac)
    atol = tolerance(case) * (
        direction_scale(o1.jac, o1.w1) + direction_scale(o2.jac, o2.w1)
        + direction_scale(o12.jac, o12.w1)
    )
    err = np.abs(o12.d1 - (o1.d1 + o2.d1)).max()
    assert err <= atol, (
        f"{case.name}: d((c1 + c2) J) != d(c1 J) + d(c2 J): error {err:.3e} > {atol:.3e}"
    )


def check_case(case: Case) -> None:
    info = mtopt.method_info(case.name)
    arrays = make_arrays(case)
    out = run_case(case, arrays, arrays.jac)
    check_finite(case, out)
    def non_conflicting() -> None:
        for options in claim_option_sets(info.non_conflicting):
            o = out if not options else run_case(
                case, arrays, arrays.jac, extra=tuple(sorted(options.items())))
            for d, s in ((o.d1, "step 1"), (o.d2, "step 2")):
                check_non_conflicting(case, o.jac, d, f"{s}, options {options}")

    checks = {
        "weights": lambda: [check_weight_claim(case, arrays, w) for w in (out.w1, out.w2)],
        "non_conflicting": non_conflicting,
        "permutation": lambda: check_permutation(case, arrays, out),
        "linear_under_scaling": lambda: check_linear_under_scaling(case, arrays),
    }
    wanted = ["weights"]
    if info.non_conflicting:
        wanted.append("non_conflicting")
    if info.permutation_invariant and not info.stochastic and case.num_tasks > 1:
        wanted.append("permutation")
    if info.linear_under_scaling and case.num_tasks > 1:
        wanted.append("linear_under_scaling")
    for prop in wanted:
        if known_failure(case, prop) is None:
            checks[prop]()


# Passing cases per method, for the closing note.
COUNTS: dict[str, int] = {}
COUNTS_FILE = pathlib.Path(tempfile.gettempdir()) / "mtopt_hypothesis_counts.json"


def run_property_test(name: str, max_examples: int) -> None:
    passed = []

    @settings(max_examples=max_examples, **COMMON)
    @given(case=cases(name))
    def test(case: Case) -> None:
        check_case(case)
        passed.append(case)

    test()  # raises (after shrinking) on a failure; then nothing is counted
    COUNTS[name] = COUNTS.get(name, 0) + len(passed)


@pytest.mark.parametrize("name", NAMES)
def test_properties(name):
    run_property_test(name, DEFAULT_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_properties_many_examples(name):
    run_property_test(name, SLOW_EXAMPLES)


def known_failure_params():
    return [
        pytest.param(f, id=f"{name}-{f.prop}-{i}", marks=pytest.mark.xfail(strict=True, reason=f.reason))
        for name, failures in KNOWN_FAILURES.items()
        for i, f in enumerate(failures)
    ]


@pytest.mark.parametrize("failure", known_failure_params())
def test_known_failures_still_fail(failure):
    """Hypothesis' minimal failing case of each known failure: xfail(strict=True),
    so the suite notices when the method is fixed and the exclusion can go."""
    assert failure.applies(failure.case)
    known = KNOWN_FAILURES.pop(failure.case.name)
    try:
        check_case(failure.case)
    finally:
        KNOWN_FAILURES[failure.case.name] = known


# Minimal failing cases of the slow run that were fixed: each runs in the
# default run so the failure cannot return unnoticed.
FIXED_CASES = [
    # float32 log-loss gradients of about 1e17 (gradients of 1e10 over losses of
    # 1e-7): their squared norms overflowed and DB-MTL's weights were [inf, inf, nan].
    Case("db_mtl", 3, 9, 3, "float32", 10.0, 5.0, -7.0, 4.0, 0, 0, 0, "vertex", 0),
]


# (ids without a bare method-name token: they run by default whatever the method,
# unlike the per-method sweeps that tests/conftest.py thins out)
@pytest.mark.parametrize("case", FIXED_CASES, ids=lambda c: f"{c.name}@seed{c.seed}")
def test_fixed_minimal_cases(case):
    check_case(case)


def test_cases_have_the_structure_they_claim():
    """The generator makes what it says: rank, zero rows, duplicated and opposite
    rows, scales within [1e-12, 1e12] (guards the generator itself)."""
    case = Case("mgda", 8, 10, 3, "float32", 0.0, 24.0, 0.0, 16.0, 2, 1, 1, "sparse", 5)
    a = make_arrays(case)
    jac = a.jac
    assert np.linalg.matrix_rank(jac) <= 3
    assert np.sum(np.all(jac == 0.0, axis=1)) >= 2
    norms = np.linalg.norm(jac, axis=1)
    assert norms.max() <= 1e13 and norms[norms > 0].min() >= 1e-13
    assert np.all(a.losses > 0) and np.all(a.losses >= 1e-8) and np.all(a.losses <= 1e8)
    np.testing.assert_allclose(a.preference.sum(), 1.0)
    assert np.sum(a.preference == 0.0) == 4
    assert np.all(jac[:, case.dim:] == 0.0)


@pytest.mark.slow
def test_zz_case_counts_summary():
    """Prints ``method: N cases`` for every method run in this process and
    writes them to <tmp>/mtopt_hypothesis_counts.json (run with -n 0 -s)."""
    lines = [f"{name}: {COUNTS.get(name, 0)} cases" for name in NAMES]
    print("\n" + "\n".join(lines))
    COUNTS_FILE.write_text(json.dumps({name: COUNTS.get(name, 0) for name in NAMES}, indent=1))
    assert any(COUNTS.values()), "no property test ran in this process"
