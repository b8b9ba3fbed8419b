"""Method-state safety, over every registered method.

(a) a state survives orbax (mtopt.checkpoint) and flatten/unflatten bit for bit, and
    the next update from the restored state equals the one from the original;
(b) a state saved for T = 3 cannot be restored into a T = 2 target;
(c) a state made for T = 3 fed T = 2 losses / Gramian / Jacobian is a clear ValueError at
    trace time (eagerly, under jit, under vmap and through mtopt.value_and_grad);
(d) stochastic methods: same key -> same result, different keys -> different results.

Stateless methods are covered too: their state (``EmptyState(T)``, or
``SolverState(T, solver)`` for methods with an iterative solver) holds T statically,
the checkpoint records it and every update checks it. Exempt from (b) and (c):
``pmtl``, whose state (a step counter, a warm-up flag and solver diagnostics) has no
task axis; pmtl's *configuration* (the (K, T) preferences) does, and is checked.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtopt
from mtopt import checkpoint

NAMES = mtopt.method_names()
STATELESS = tuple(n for n in NAMES if not mtopt.method_info(n).stateful)
STATEFUL = tuple(n for n in NAMES if mtopt.method_info(n).stateful)
STOCHASTIC = tuple(n for n in NAMES if mtopt.method_info(n).stochastic)
# Stateful, but the state has no task axis (see the module docstring).
TASK_FREE_STATE = ("pmtl",)
# Methods whose options (not state) fix the number of tasks.
TASK_FIXED_CONFIG = ("linear", "pmtl")

PARAMS = {"w": jnp.zeros((4,)), "b": {"bias": jnp.zeros((2,))}}

# Options that change the structure of a state (another state type, an optimizer state).
VARIANTS = {
    "dwa-window": ("dwa", {"mode": "window", "window": 2}),
    "dwa-epoch2": ("dwa", {"steps_per_epoch": 2}),
    "famo-lagged": ("famo", {"lagged": True}),
    "uncertainty-sgd_momentum": ("uncertainty", {"optimizer": optax.sgd(0.1, momentum=0.9)}),
    "imtl_l-adam": ("imtl_l", {"optimizer": optax.adam(0.01)}),
    "nash_mtl-every2": ("nash_mtl", {"update_weights_every": 2}),
}
# Every registered method, plus the variants: id -> (name, options).
CASES = {**{n: (n, {}) for n in mtopt.method_names()}, **VARIANTS}


def make_method(name, num_tasks, **options):
    """A registered method, with the options it cannot do without for ``num_tasks``."""
    if name == "linear":
        options.setdefault("weights", [1.0 + i for i in range(num_tasks)])
    if name == "dwa":
        options.setdefault("steps_per_epoch", 1)
    if name == "pmtl":
        even = jnp.full((num_tasks,), 1.0 / num_tasks)
        skew = jnp.arange(1.0, num_tasks + 1) / (num_tasks * (num_tasks + 1) / 2)
        options.setdefault("preferences", jnp.stack([even, skew]))
    return mtopt.method(name, **options)


def make_inputs(num_tasks, seed):
    """Generic conflicting task gradients: losses, Jacobian pytree and its Gramian."""
    key = jax.random.key(seed)
    k_loss, k_jac = jax.random.split(key)
    losses = 1.0 + jax.random.uniform(k_loss, (num_tasks,))
    leaves, treedef = jax.tree.flatten(PARAMS)
    keys = jax.random.split(k_jac, len(leaves))
    jac = jax.tree.unflatten(
        treedef, [jax.random.normal(k, (num_tasks,) + x.shape) for k, x in zip(keys, leaves)]
    )
    flat = jnp.concatenate([x.reshape(num_tasks, -1) for x in jax.tree.leaves(jac)], axis=1)
    preference = jnp.arange(1.0, num_tasks + 1) / (num_tasks * (num_tasks + 1) / 2)
    return {"losses": losses, "gramian": flat @ flat.T, "jacobian": jac,
            "preference": preference}


def update_kwargs(name, inputs, key):
    info = mtopt.method_info(name)
    kwargs = {}
    if info.needs is mtopt.Needs.GRAMIAN:
        kwargs["gramian"] = inputs["gramian"]
    if info.needs is mtopt.Needs.JACOBIAN:
        kwargs["jacobian"] = inputs["jacobian"]
    if info.stochastic:
        kwargs["key"] = key
    if info.preference:
        kwargs["preference"] = inputs["preference"]
    return kwargs


def make_step(method):
    """jit(update, then combine when the method has its own direction)."""

    def step(state, losses, **kwargs):
        weights, new_state = method.update(state, losses, **kwargs)
        direction = None
        if method.combine is not None:
            direction = method.combine(kwargs["jacobian"], weights, new_state, key=kwargs.get("key"))
        return weights, new_state, direction

    return jax.jit(step)


def assert_trees_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def run_steps(name, num_tasks, steps, seed=0, **options):
    """(method, jitted step, state after ``steps`` updates on varying inputs)."""
    method = make_method(name, num_tasks, **options)
    step = make_step(method)
    state = method.init(num_tasks, PARAMS)
    for i in range(steps):
        inputs = make_inputs(num_tasks, seed + i)
        _, state, _ = step(state, inputs["losses"],
                           **update_kwargs(name, inputs, jax.random.key(100 + i)))
    return method, step, state


def test_registry_partition_is_what_the_docstring_says():
    for name in STATELESS:
        state = make_method(name, 3).init(3, PARAMS)
        assert isinstance(state, (mtopt.EmptyState, mtopt.SolverState)), name
        assert state.num_tasks == 3, name
    for name in STATEFUL:
        assert jax.tree.leaves(make_method(name, 3).init(3, PARAMS)), name
    assert set(TASK_FREE_STATE) <= set(STATEFUL)


def test_declared_history_matches_the_registry():
    """Weighting.stateful (what drivers read) and the registry's column agree; Nash-MTL's
    state is only a warm start unless it reuses weights between updates."""
    for name in NAMES:
        method = make_method(name, 3)
        if name == "nash_mtl":
            assert not method.stateful and make_method(name, 3, update_weights_every=2).stateful
        else:
            assert method.stateful == mtopt.method_info(name).stateful, name


# ------------------------------------------------------------------ (a) round trips


@pytest.mark.parametrize("case", CASES)
def test_state_round_trip_and_next_update(tmp_path, case):
    name, options = CASES[case]
    num_tasks = 3
    method, step, state = run_steps(name, num_tasks, steps=5, **options)
    template = method.init(num_tasks, PARAMS)  # fresh values, same structure

    checkpoint.save(tmp_path, 2, state)
    restored = checkpoint.restore(tmp_path, template)
    assert type(restored) is type(state)
    assert_trees_bit_identical(restored, state)

    leaves, treedef = jax.tree.flatten(state)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert_trees_bit_identical(rebuilt, state)

    inputs = make_inputs(num_tasks, seed=7)
    kwargs = update_kwargs(name, inputs, jax.random.key(3))
    expected = step(state, inputs["losses"], **kwargs)
    for other in (restored, rebuilt):
        got = step(other, inputs["losses"], **kwargs)
        assert_trees_bit_identical(got, expected)
    assert bool(jnp.all(jnp.isfinite(expected[0])))

    # Weights that depend on earlier steps are declared (Weighting.stateful), so that a
    # driver that cannot thread one state per run (train_psl) refuses the method instead
    # of running it from its initial state at every step.
    # Conversely a declared history is used: after five steps the weights are no longer
    # those of the first step (the state is not ignored, the method does not fall back on
    # its initial weights). PMTL is exempt: during its warm-up (here, all five steps) its
    # weights depend on the current point only.
    from_fresh = step(template, inputs["losses"], **kwargs)[0]
    same = np.allclose(np.asarray(from_fresh), np.asarray(expected[0]), rtol=1e-5, atol=1e-7)
    if not same:
        assert method.stateful, f"{case}: its weights depend on earlier steps, undeclared"
    if method.stateful and name != "pmtl":
        assert not same, f"{case}: declared stateful, but its state did not change its weights"


# ------------------------------------------------------------------ (b) restore T=3 into T=2


@pytest.mark.parametrize("case", CASES)
def test_restore_into_other_task_count(tmp_path, case):
    name, options = CASES[case]
    checkpoint.save(tmp_path, 0, make_method(name, 3, **options).init(3, PARAMS))
    target = make_method(name, 2, **options).init(2, PARAMS)
    if name in STATELESS:
        with pytest.raises(ValueError, match="was made for 3 tasks, the target for 2 tasks"):
            checkpoint.restore(tmp_path, target)
        return
    if name in TASK_FREE_STATE:
        # Exempt: the state has no task axis, it is the same for every T.
        assert jax.eval_shape(lambda: target) == jax.eval_shape(
            lambda: make_method(name, 3, **options).init(3, PARAMS))
        assert_trees_bit_identical(checkpoint.restore(tmp_path, target), target)
        return
    with pytest.raises(ValueError, match=r"leaf \S+ does not match the target: expected shape "
                       r"\([^)]*2[^)]*\).*found shape \([^)]*3[^)]*\)"):
        checkpoint.restore(tmp_path, target)


# ------------------------------------------------------------------ (c) update T=3 state with T=2


def _mismatch_cases():
    for case, (name, _) in CASES.items():
        if name not in TASK_FREE_STATE and name not in TASK_FIXED_CONFIG:
            yield pytest.param(case, "state", id=f"{case}-state")
        if name in TASK_FIXED_CONFIG and case == name:
            yield pytest.param(case, "config", id=f"{case}-config")


@pytest.mark.parametrize("case,source", list(_mismatch_cases()))
@pytest.mark.parametrize("state_tasks,step_tasks", [(3, 2), (2, 3)])
@pytest.mark.parametrize("transform", ["eager", "jit", "vmap"])
def test_update_with_other_task_count_raises(case, source, state_tasks, step_tasks, transform):
    name, options = CASES[case]
    if source == "state":
        # The method is configured for the step's T; only the state is wrong.
        method = make_method(name, step_tasks, **options)
        state = make_method(name, state_tasks, **options).init(state_tasks, PARAMS)
    else:
        # A method whose options fix T (stateless or not), given a step with another T.
        method = make_method(name, state_tasks)
        state = method.init(state_tasks, PARAMS)
    inputs = make_inputs(step_tasks, seed=0)
    kwargs = update_kwargs(name, inputs, jax.random.key(0))
    losses = inputs["losses"]
    update = method.update
    if transform == "jit":
        update = jax.jit(update)
    elif transform == "vmap":
        state, losses, kwargs = jax.tree.map(lambda x: jnp.stack([x, x]), (state, losses, kwargs))
        update = jax.vmap(update)
    match = rf"{state_tasks} tasks\b.*\b(received|got) {step_tasks} task"
    if name in ("linear", "log"):  # fixed per-task weights: the message is about them
        match = rf"built with {state_tasks} weights .* used with {step_tasks} tasks"
    with pytest.raises(ValueError, match=match):
        update(state, losses, **kwargs)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in TASK_FREE_STATE + TASK_FIXED_CONFIG])
def test_training_step_with_other_task_count_raises(name):
    """Through mtopt.value_and_grad under jit: a 3-task state in a 2-task training step."""
    method = make_method(name, 2)
    state = make_method(name, 3).init(3, PARAMS)

    def task_losses(params, x):
        h = jnp.sum(params["w"] * x) + jnp.sum(params["b"]["bias"])
        return jnp.stack([h**2, (h - 1.0) ** 2])

    step = jax.jit(mtopt.value_and_grad(task_losses, method))
    kwargs = {"key": jax.random.key(0)} if mtopt.method_info(name).stochastic else {}
    if mtopt.method_info(name).preference:
        kwargs["preference"] = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match=r"initialised for 3 tasks.*received 2 task"):
        step(PARAMS, state, jnp.ones(4), **kwargs)


def test_task_free_state_still_rejects_wrong_preferences():
    """pmtl's state has no task axis, but a 2-task step of a 3-task pmtl is an error."""
    method = make_method("pmtl", 3)
    inputs = make_inputs(2, seed=0)
    with pytest.raises(ValueError, match=r"\(3 tasks\) but the step received 2 task losses"):
        jax.jit(method.update)(method.init(3), inputs["losses"], gramian=inputs["gramian"],
                               preference=inputs["preference"])


# ------------------------------------------------------------------ (d) determinism


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_methods_are_deterministic_in_the_key(name):
    num_tasks = 4
    method, step, state = run_steps(name, num_tasks, steps=1)
    inputs = make_inputs(num_tasks, seed=11)

    def run(key):
        return step(state, inputs["losses"], **update_kwargs(name, inputs, key))

    # Same key (also a fresh but equal key object) -> bit-identical weights, state, direction.
    first = run(jax.random.key(5))
    assert_trees_bit_identical(run(jax.random.key(5)), first)
    assert_trees_bit_identical(run(jax.random.wrap_key_data(jax.random.key_data(
        jax.random.key(5)))), first)
    # Different keys -> different results (several keys: a random order of 4 tasks can
    # coincide for two keys, not for all of them).
    results = [run(jax.random.key(k)) for k in range(6)]
    outputs = [
        np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves((w, d))])
        for w, _, d in results
    ]
    distinct = {o.tobytes() for o in outputs}
    assert len(distinct) >= 3, f"{name}: only {len(distinct)} distinct results over 6 keys"
    assert all(np.all(np.isfinite(o)) for o in outputs)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_methods_require_a_key(name):
    method = make_method(name, 3)
    inputs = make_inputs(3, seed=0)
    kwargs = update_kwargs(name, inputs, None)
    kwargs.pop("key", None)
    with pytest.raises(ValueError, match="needs an explicit PRNG key"):
        method.update(method.init(3, PARAMS), inputs["losses"], **kwargs)
