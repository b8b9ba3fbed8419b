"""Bad inputs fail at trace time, under ``jax.jit`` too, with messages that name
what was expected and what was received.

Covered for every registered method where it applies: a state initialised for
another number of tasks; integer and non-vector losses; a Gramian that is not
(T, T); a missing Gramian or Jacobian; preference vectors of the wrong length,
off the simplex, negative, non-finite or missing (every preference-driven
method); through :func:`mtopt.value_and_grad`: non-scalar task losses and
integer losses; fixed weights of the wrong length, negative or non-finite.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import mtopt

NAMES = mtopt.method_names()
STATEFUL = [n for n in NAMES if mtopt.method_info(n).stateful]
PREFERENCE = [n for n in NAMES if mtopt.method_info(n).preference]
GRAMIAN = [n for n in NAMES if mtopt.method_info(n).needs is mtopt.Needs.GRAMIAN]
JACOBIAN = [n for n in NAMES if mtopt.method_info(n).needs is mtopt.Needs.JACOBIAN]
# Methods that take an optional preference= in update (TorchJD's pref_vector, targets).
OPTIONAL_PREFERENCE = ["upgrad", "dualproj", "config", "aligned_mtl"]
# The name each method uses in its messages, where it differs from the registry name.
MESSAGE_NAME: dict[str, str] = {}  # every method's messages use its registry name
PARAMS = {"w": jnp.zeros((4,))}

MODES = ["eager", "jit"]


def build(name: str, num_tasks: int) -> mtopt.Weighting:
    options = {}
    if name == "linear":
        options = {"weights": [1.0] * num_tasks}
    if name == "dwa":
        options = {"steps_per_epoch": 1}
    if name == "pmtl":
        options = {"preferences": jnp.eye(num_tasks)}
    return mtopt.method(name, **options)


def update(name, method, state, losses, *, mode, gramian="auto", jacobian="auto",
           preference="auto"):
    """Call ``method.update`` eagerly or under jit with everything the method reads."""
    t = losses.shape[0]
    if gramian == "auto":
        gramian = jnp.eye(t) if method.needs is not mtopt.Needs.LOSSES else None
    if jacobian == "auto":
        jacobian = {"w": jnp.ones((t, 4))} if method.needs is mtopt.Needs.JACOBIAN else None
    if preference == "auto":
        preference = jnp.full((t,), 1.0 / t) if mtopt.method_info(name).preference else None

    def f(state, losses):
        return method.update(state, losses, gramian=gramian, jacobian=jacobian,
                             key=jax.random.key(0), preference=preference)

    return (jax.jit(f) if mode == "jit" else f)(state, losses)


def msg_name(name: str) -> str:
    return MESSAGE_NAME.get(name, name)


# --- the method state -------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [n for n in NAMES if n != "linear"])  # linear: its weights fix T
def test_state_for_another_number_of_tasks(name, mode):
    """Every state knows its T, stateless methods' included (EmptyState(T))."""
    method = build(name, 2)
    state = method.init(2, PARAMS)
    if name == "pmtl":
        expected = r"pmtl: the preferences have shape \(2, 2\) \(2 tasks\) but the step " \
                   r"received 3 task losses"
        method3 = method
    else:
        expected = (rf"{name}: the state was initialised for 2 tasks but the step received 3 "
                    r"task losses. Call init\(num_tasks=3\)")
        method3 = build(name, 3)
    with pytest.raises(ValueError, match=expected):
        update(name, method3, state, jnp.ones((3,)), mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_state_mismatch_through_value_and_grad(mode):
    method = mtopt.uncertainty()
    step = mtopt.value_and_grad(lambda p: {"a": jnp.sum(p), "b": jnp.sum(p ** 2)}, method)
    step = jax.jit(step) if mode == "jit" else step
    with pytest.raises(ValueError, match="uncertainty: the state was initialised for 3 tasks "
                                         "but the step received 2 task losses"):
        step(jnp.ones(3), method.init(3))


# --- losses -----------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_integer_losses(name, mode):
    method = build(name, 3)
    with pytest.raises(TypeError, match="losses must have a floating dtype, got int32"):
        update(name, method, method.init(3, PARAMS), jnp.ones((3,), jnp.int32), mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_losses_not_a_vector(name, mode):
    method = build(name, 3)
    with pytest.raises(ValueError, match=r"losses must be a vector of shape \(T,\) with one "
                                         r"scalar loss per task, got shape \(3, 1\)"):
        update(name, method, method.init(3, PARAMS), jnp.ones((3, 1)), mode=mode,
               gramian=jnp.eye(3), preference=None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "returned, expected",
    [
        (lambda p: {"a": jnp.sum(p), "b": p}, r"Task loss 'b' must be a scalar \(shape \(\)\), "
                                               r"got shape \(3,\)"),
        (lambda p: [jnp.sum(p), p[:2]], r"Task loss '1' must be a scalar \(shape \(\)\), got "
                                         r"shape \(2,\)"),
        (lambda p: jnp.stack([p, p]), r"must return a \(T,\) vector of task losses.*got an "
                                       r"array of shape \(2, 3\)"),
        (lambda p: jnp.sum(p), r"got an array of shape \(\)"),
    ],
    ids=["dict", "list", "matrix", "scalar"],
)
def test_non_scalar_task_losses(returned, expected, mode):
    for method in (mtopt.equal(), mtopt.mgda()):  # loss-only and Gramian paths
        step = mtopt.value_and_grad(returned, method)
        step = jax.jit(step) if mode == "jit" else step
        with pytest.raises(ValueError, match=expected):
            step(jnp.ones(3), method.init(2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("low_memory", [False, True])
def test_integer_losses_through_value_and_grad(mode, low_memory):
    def fn(p):
        return {"a": jnp.sum(p).astype(jnp.int32), "b": jnp.sum(p ** 2).astype(jnp.int32)}

    for method in (mtopt.equal(), mtopt.mgda()):
        step = mtopt.value_and_grad(fn, method, low_memory=low_memory)
        step = jax.jit(step) if mode == "jit" else step
        with pytest.raises(TypeError, match="Task losses must have a floating dtype, got int32"):
            step(jnp.ones(3), method.init(2))


# --- Gramian and Jacobian ---------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3, 2), (2, 2), (3, 3, 1)], ids=str)
@pytest.mark.parametrize("name", GRAMIAN)
def test_gramian_of_the_wrong_shape(name, shape, mode):
    method = build(name, 3)
    expected = re.escape(
        f"{name}: expected a Gramian of shape (3, 3) for 3 task losses, got shape {shape}."
    )
    with pytest.raises(ValueError, match=expected):
        update(name, method, method.init(3, PARAMS), jnp.ones((3,)), mode=mode,
               gramian=jnp.ones(shape))


@pytest.mark.parametrize("name", GRAMIAN)
def test_missing_gramian(name):
    method = build(name, 3)
    with pytest.raises(ValueError, match=rf"{name} needs the Gramian of the task gradients: "
                                         r"pass gramian=, or use mtopt.value_and_grad"):
        update(name, method, method.init(3, PARAMS), jnp.ones((3,)), mode="eager",
               gramian=None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [n for n in JACOBIAN if n != "graddrop"])
def test_jacobian_missing_or_for_another_number_of_tasks(name, mode):
    method = build(name, 3)
    state = method.init(3, PARAMS)
    with pytest.raises(ValueError, match=rf"{name} needs the Jacobian of the task gradients"):
        update(name, method, state, jnp.ones((3,)), mode=mode, jacobian=None)
    with pytest.raises(ValueError, match=rf"{name}: expected a Jacobian leaf of shape \(3, 4\) "
                                         r"\(T=3 tasks, then the parameter's shape\), got shape "
                                         r"\(2, 4\)"):
        update(name, method, state, jnp.ones((3,)), mode=mode, jacobian={"w": jnp.ones((2, 4))})


@pytest.mark.parametrize("mode", MODES)
def test_graddrop_jacobian_for_another_number_of_tasks(mode):
    method = mtopt.graddrop()
    with pytest.raises(ValueError, match=r"graddrop: every Jacobian leaf must have a leading "
                                         r"task axis of size 3, got a leaf of shape \(2, 4\)"):
        update("graddrop", method, method.init(3), jnp.ones((3,)), mode=mode,
               jacobian={"w": jnp.ones((2, 4))})


# --- preference vectors -----------------------------------------------------

BAD_PREFERENCES = [
    ([0.5, 0.5], r"expected a preference vector of shape \(3,\) for 3 task losses, got "
                 r"shape \(2,\)"),
    ([[0.2, 0.3, 0.5]], r"expected a preference vector of shape \(3,\) for 3 task losses, got "
                        r"shape \(1, 3\)"),
    ([1.0, 0.5, 0.5], r"the preference must sum to 1 \(on the simplex\), got sum 2"),
    ([0.1, 0.1, 0.1], r"the preference must sum to 1 \(on the simplex\), got sum 0.3"),
    ([1.5, -0.5, 0.0], r"the preference must be finite and non-negative, got \[ 1.5 -0.5"),
    ([jnp.nan, 0.5, 0.5], r"the preference must be finite and non-negative, got \[nan"),
    ([jnp.inf, 0.0, 0.0], r"the preference must be finite and non-negative, got \[inf"),
]


@pytest.mark.parametrize("pref, expected", BAD_PREFERENCES,
                         ids=["len2", "2d", "sum2", "sum0.3", "negative", "nan", "inf"])
@pytest.mark.parametrize("name", PREFERENCE)
def test_bad_preference(name, pref, expected):
    method = build(name, 3)
    with pytest.raises(ValueError, match=rf"{msg_name(name)}: {expected}"):
        update(name, method, method.init(3, PARAMS), jnp.ones((3,)), mode="eager",
               preference=jnp.asarray(pref))


@pytest.mark.parametrize("name", PREFERENCE)
def test_bad_preference_under_jit(name):
    """Under jit the shape is checked at trace time; so are values known at trace
    time (a constant preference)."""
    method = build(name, 3)
    state = method.init(3, PARAMS)
    with pytest.raises(ValueError, match=rf"{msg_name(name)}: expected a preference vector of "
                                         r"shape \(3,\) for 3 task losses, got shape \(2,\)"):
        jax.jit(lambda s, l, r: method.update(s, l, gramian=jnp.eye(3), preference=r))(
            state, jnp.ones(3), jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=rf"{msg_name(name)}: the preference must sum to 1"):
        update(name, method, state, jnp.ones((3,)), mode="jit",
               preference=jnp.array([1.0, 0.5, 0.5]))


@pytest.mark.parametrize("name", PREFERENCE)
def test_traced_invalid_preference_values_give_nan_weights(name):
    """Traced preference values cannot be checked at trace time: an invalid one
    (off the simplex, negative, non-finite) gives NaN weights, so the step's
    nan_policy applies, instead of a silently renormalised answer; a valid one
    gives finite weights."""
    method = build(name, 3)
    state = method.init(3, PARAMS)
    losses = jnp.array([1.0, 2.0, 3.0])
    f = jax.jit(lambda r: method.update(state, losses, gramian=jnp.eye(3), preference=r)[0])
    assert bool(jnp.all(jnp.isfinite(f(jnp.array([0.5, 0.25, 0.25])))))
    for bad in ([2.0, 1.0, 1.0], [-0.5, 1.0, 0.5], [jnp.nan, 0.5, 0.5]):
        assert bool(jnp.all(jnp.isnan(f(jnp.array(bad))))), (name, bad)


@pytest.mark.parametrize("name", PREFERENCE)
def test_missing_preference(name):
    method = build(name, 3)
    with pytest.raises(ValueError, match=rf"{msg_name(name)} needs a preference vector: pass "
                                         r"preference=r to update, an array of shape \(3,\)"):
        update(name, method, method.init(3, PARAMS), jnp.ones((3,)), mode="eager",
               preference=None)


def test_pmtl_preferences_at_construction():
    with pytest.raises(ValueError, match=r"pmtl \(preferences\[1\]\): the preference must sum "
                                         r"to 1 \(on the simplex\), got sum 1.5"):
        mtopt.pmtl(jnp.array([[0.5, 0.5], [1.0, 0.5]]))
    with pytest.raises(ValueError, match=r"pmtl \(preferences\[0\]\): the preference must be "
                                         r"finite and non-negative"):
        mtopt.pmtl(jnp.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match=r"pmtl: preferences must be a \(K, T\) array of K "
                                         r"preference vectors, got shape \(2,\)"):
        mtopt.pmtl(jnp.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"pmtl: the preferences have 2 entries \(shape "
                                         r"\(1, 2\)\) but init got num_tasks=3"):
        mtopt.pmtl(jnp.array([[0.5, 0.5]])).init(3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", OPTIONAL_PREFERENCE)
def test_optional_preference_of_the_wrong_length(name, mode):
    method = build(name, 3)
    with pytest.raises(ValueError, match=rf"{name}: preference must have shape \(3,\), .*got "
                                         r"shape \(2,\)"):
        update(name, method, method.init(3), jnp.ones((3,)), mode=mode,
               preference=jnp.array([0.5, 0.5]))


def optional_preference_params():
    out = []
    for name in OPTIONAL_PREFERENCE:
        cases = [("nan", [float("nan"), 0.5, 0.5])]
        if name in ("upgrad", "dualproj"):  # combination weights; config/aligned_mtl: targets
            cases.append(("negative", [1.5, -0.5, 0.0]))
        for label, pref in cases:
            out.append(pytest.param(name, pref, id=f"{name}-{label}"))
    return out


@pytest.mark.parametrize("name, pref", optional_preference_params())
def test_optional_preference_values(name, pref):
    method = build(name, 3)
    with pytest.raises(ValueError, match=rf"{name}: .*preference.*(non-negative|finite)"):
        update(name, method, method.init(3), jnp.ones((3,)), mode="eager",
               preference=jnp.asarray(pref))


# --- fixed weights ------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factory, name", [(mtopt.linear, "linear"),
                                           (mtopt.log_scalarization, "log")])
def test_fixed_weights_of_the_wrong_length(factory, name, mode):
    method = factory([1.0, 0.5, 0.25])
    step = mtopt.value_and_grad(lambda p: {"a": jnp.sum(p ** 2) + 1, "b": jnp.sum(p) + 2}, method)
    step = jax.jit(step) if mode == "jit" else step
    with pytest.raises(ValueError, match=rf"{name} was built with 3 weights .* used with 2 tasks"):
        step(jnp.ones(3), mtopt.EmptyState(2))
    with pytest.raises(ValueError, match=rf"{name} was built with 3 weights .* used with 2 tasks"):
        method.init(2)


@pytest.mark.parametrize("factory", [mtopt.linear, mtopt.log_scalarization],
                         ids=["linear", "log"])
def test_fixed_weights_length_message_is_about_the_weights(factory):
    method = factory([1.0, 0.5, 0.25])
    for call in (lambda: method.init(2),
                 lambda: method.update(mtopt.EmptyState(2), jnp.ones(2))):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "3 weights" in message and "2 task" in message, message
        assert "state was initialised" not in message and "init(num_tasks=2)" not in message


@pytest.mark.parametrize("factory, name", [(mtopt.linear, "linear"),
                                           (mtopt.log_scalarization, "log")])
@pytest.mark.parametrize(
    "weights, expected",
    [
        ([1.0, -0.5], r"weights must be non-negative, got \[1.0, -0.5\]"),
        ([1.0, float("nan")], r"weights must be finite, got \[1.0, nan\]"),
        ([float("inf"), 1.0], r"weights must be finite, got \[inf, 1.0\]"),
        ([], r"weights must be a non-empty 1-D sequence \(T,\), got shape \(0,\)"),
        ([[1.0, 2.0]], r"weights must be a non-empty 1-D sequence \(T,\), got shape \(1, 2\)"),
    ],
    ids=["negative", "nan", "inf", "empty", "2d"],
)
def test_bad_fixed_weights(factory, name, weights, expected):
    with pytest.raises(ValueError, match=rf"{name}: {expected}"):
        factory(weights)


def test_non_numeric_fixed_weights():
    with pytest.raises(TypeError, match=r"linear: weights must be a sequence of numbers or a "
                                        r"dict \{task name: number\}, got \['a', 'b'\]"):
        mtopt.linear(["a", "b"])
