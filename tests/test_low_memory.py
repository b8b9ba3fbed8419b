"""value_and_grad(..., low_memory=True): the Gramian without the Jacobian, same step as the default.

The model is a flax nnx network with every layer kind a real trunk has: a
convolution (nnx.Conv), batch normalisation in evaluation mode (nnx.BatchNorm with
use_running_average=True and non-trivial running statistics), a dense layer
(nnx.Linear) and layer normalisation (nnx.LayerNorm), then one linear head per
task; ``shared=`` selects the trunk. For every Gramian method of the registry the
low-memory path must return the default path's Gramian, weights, gradient and
next state (two steps, state threaded), to float32 tolerance.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mtopt

NUM_TASKS = 3
# Float32 tolerances. The two paths compute the Gramian differently (blocked
# J J^T vs one JVP per row), which agree to ~1e-6 relative; solvers then amplify
# that by the conditioning of their problem.
GRAM_RTOL = 1e-4
WEIGHT_RTOL, WEIGHT_ATOL = 2e-3, 2e-5
GRAD_RTOL, GRAD_ATOL = 2e-3, 2e-5


class Trunk(nnx.Module):
    """Conv 3x3 -> BatchNorm (eval) -> relu -> Dense -> LayerNorm -> tanh."""

    def __init__(self, rngs: nnx.Rngs, channels: int = 4, features: int = 16):
        self.conv = nnx.Conv(1, channels, kernel_size=(3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(channels, use_running_average=True, rngs=rngs)
        self.dense = nnx.Linear(6 * 6 * channels, features, rngs=rngs)
        self.ln = nnx.LayerNorm(features, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.bn(self.conv(x)))
        h = h.reshape((h.shape[0], -1))
        return jnp.tanh(self.ln(self.dense(h)))


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, num_tasks: int = NUM_TASKS):
        self.trunk = Trunk(rngs)
        self.heads = nnx.List([nnx.Linear(16, 1, rngs=rngs) for _ in range(num_tasks)])

    def __call__(self, x):
        z = self.trunk(x)
        return [head(z)[:, 0] for head in self.heads]


def is_trunk(path, leaf):
    del leaf
    return getattr(path[0], "key", None) == "trunk"


def make_problem(num_tasks=NUM_TASKS, seed=0, penalty=False, batch=16):
    model = Net(nnx.Rngs(seed), num_tasks)
    # Running statistics that are not the identity, so BatchNorm actually transforms.
    model.trunk.bn.mean[...] = jnp.linspace(-0.3, 0.3, 4, dtype=jnp.float32)
    model.trunk.bn.var[...] = jnp.linspace(0.5, 2.0, 4, dtype=jnp.float32)
    graphdef, params, stats = nnx.split(model, nnx.Param, ...)
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(kx, (batch, 6, 6, 1), jnp.float32)
    # Task scales 1, 2, 3 and a sign flip: gradients of different norms that conflict.
    scales = jnp.asarray([1.0, -2.0, 3.0, 0.5, -1.0][:num_tasks], jnp.float32)
    y = jax.random.normal(ky, (batch, num_tasks), jnp.float32) * scales[None, :]

    def task_losses(params, x, y):
        outs = nnx.merge(graphdef, params, stats)(x)
        losses = jnp.stack([jnp.mean((o - y[:, i]) ** 2) for i, o in enumerate(outs)])
        if penalty:
            reg = jnp.float32(1e-2) * sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
            return mtopt.Objectives(losses, penalty=reg)
        return losses

    return params, x, y, task_losses


GRAMIAN_METHODS = tuple(
    n for n in mtopt.method_names() if mtopt.method_info(n).needs is mtopt.Needs.GRAMIAN
)
JACOBIAN_METHODS = tuple(
    n for n in mtopt.method_names() if mtopt.method_info(n).needs is mtopt.Needs.JACOBIAN
)


def build(name, num_tasks=NUM_TASKS):
    if name == "pmtl":
        return mtopt.method(name, preferences=jnp.eye(num_tasks, dtype=jnp.float32))
    return mtopt.method(name)


def preference_for(name, num_tasks=NUM_TASKS):
    if mtopt.method_info(name).preference:
        return jnp.asarray([0.2, 0.3, 0.5][:num_tasks], jnp.float32)
    return None


def two_steps(step, params, state, x, y, keys, preference):
    """Two steps at the same parameters (lax.scan: one compiled step), state threaded."""

    def body(state, key):
        grads, info, state = step(params, state, x, y, key=key, preference=preference)
        return state, (grads, info.gramian, info.weights, info.losses, info.total)

    state, out = jax.lax.scan(body, state, keys)
    return [jax.tree.map(lambda a: a[i], out) for i in range(keys.shape[0])], state


def assert_steps_match(light, full, light_state, full_state, name):
    for (g_l, gram_l, w_l, loss_l, tot_l), (g_f, gram_f, w_f, loss_f, tot_f) in zip(light, full):
        scale = float(jnp.max(jnp.abs(gram_f)))
        np.testing.assert_allclose(gram_l, gram_f, rtol=GRAM_RTOL, atol=GRAM_RTOL * scale,
                                   err_msg=f"{name}: Gramian")
        np.testing.assert_allclose(w_l, w_f, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL,
                                   err_msg=f"{name}: weights")
        np.testing.assert_allclose(loss_l, loss_f, rtol=1e-6, err_msg=f"{name}: losses")
        np.testing.assert_allclose(tot_l, tot_f, rtol=WEIGHT_RTOL, err_msg=f"{name}: total")
        grad_scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(g_f))
        chex.assert_trees_all_close(g_l, g_f, rtol=GRAD_RTOL, atol=GRAD_ATOL * grad_scale)
    chex.assert_trees_all_close(light_state, full_state, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)


def step_outputs(grads, info):
    return [(grads, info.gramian, info.weights, info.losses, info.total)]


# Methods checked in the default run; the others of the registry run with -m slow.
FAST_METHODS = ("mgda", "upgrad", "nash_mtl")  # pcgrad (stochastic): also in the vmap test
METHOD_PARAMS = [n if n in FAST_METHODS else pytest.param(n, marks=pytest.mark.slow)
                 for n in GRAMIAN_METHODS]


@pytest.mark.parametrize("name", METHOD_PARAMS)
def test_every_gramian_method_matches_the_default_path(name):
    params, x, y, task_losses = make_problem()
    method = build(name)
    keys = jax.random.split(jax.random.key(7), 2)
    pref = preference_for(name)
    light = mtopt.value_and_grad(task_losses, method, shared=is_trunk, low_memory=True)
    full = mtopt.value_and_grad(task_losses, method, shared=is_trunk)

    @jax.jit
    def both(params, state, x, y):
        return (two_steps(light, params, state, x, y, keys, pref),
                two_steps(full, params, state, x, y, keys, pref))

    state = method.init(NUM_TASKS)
    (out_l, state_l), (out_f, state_f) = both(params, state, x, y)
    assert_steps_match(out_l, out_f, state_l, state_f, name)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(out_l))


@pytest.mark.parametrize("name", JACOBIAN_METHODS)
def test_jacobian_methods_are_rejected(name):
    _, _, _, task_losses = make_problem()
    with pytest.raises(ValueError, match=f"low_memory=True .*{mtopt.method_info(name).name}"
                                         ".* reads the Jacobian"):
        mtopt.value_and_grad(task_losses, build(name), low_memory=True)


def test_return_task_grads_is_rejected():
    _, _, _, task_losses = make_problem()
    with pytest.raises(ValueError, match=r"low_memory=True \(gramian=.low_memory.\) computes the Gramian without the Jacobian: it never forms the per-task gradients"):
        mtopt.value_and_grad(task_losses, mtopt.mgda(), low_memory=True, return_task_grads=True)


def test_chunk_size():
    """Row batches that do not divide T (2 of 3) and larger than T (5); the default
    (one row at a time) is checked by every other test of this file."""
    params, x, y, task_losses = make_problem()
    method = mtopt.mgda()
    sizes = (2, 5)
    lights = [mtopt.value_and_grad(task_losses, method, shared=is_trunk, low_memory=True,
                                   chunk_size=c) for c in sizes]
    full = mtopt.value_and_grad(task_losses, method, shared=is_trunk)
    state = method.init(NUM_TASKS)
    outs = jax.jit(lambda p, x, y: [f(p, state, x, y) for f in lights + [full]])(params, x, y)
    g_f, i_f, s_f = outs[-1]
    for c, (g_l, i_l, s_l) in zip(sizes, outs[:-1]):
        assert_steps_match(step_outputs(g_l, i_l), step_outputs(g_f, i_f), s_l, s_f,
                           f"chunk_size={c}")


@pytest.mark.parametrize("name", ["mgda", pytest.param("nash_mtl", marks=pytest.mark.slow)])
def test_with_penalty(name):
    """The penalty's gradient is added unweighted, and it is kept out of the Gramian."""
    params, x, y, task_losses = make_problem(penalty=True)
    _, _, _, plain_losses = make_problem(penalty=False)
    method = build(name)
    state = method.init(NUM_TASKS)
    light = mtopt.value_and_grad(task_losses, method, shared=is_trunk, low_memory=True)
    full = mtopt.value_and_grad(task_losses, method, shared=is_trunk)
    plain = mtopt.value_and_grad(plain_losses, method, shared=is_trunk, low_memory=True)
    (g_l, i_l, s_l), (g_f, i_f, s_f), (_, i_plain, _) = jax.jit(
        lambda p, x, y: [f(p, state, x, y) for f in (light, full, plain)])(params, x, y)
    assert_steps_match(step_outputs(g_l, i_l), step_outputs(g_f, i_f), s_l, s_f, name)
    np.testing.assert_allclose(i_l.penalty, i_f.penalty, rtol=1e-6)
    assert float(i_l.penalty) > 0.0
    # Gramian of the task losses alone: the same with and without the penalty.
    np.testing.assert_allclose(i_l.gramian, i_plain.gramian, rtol=1e-5,
                               atol=1e-6 * float(jnp.max(jnp.abs(i_plain.gramian))))
    # grads = grad(sum_i w_i L_i + R) with the weights the step used.
    w = i_l.weights

    def weighted(p):
        obj = task_losses(p, x, y)
        return jnp.sum(w * obj.losses) + obj.penalty

    chex.assert_trees_all_close(g_l, jax.grad(weighted)(params), rtol=1e-4, atol=1e-6)


def test_loss_only_method_with_diagnostics():
    """A loss-only method with diagnostics=True gets the Gramian from the light rows."""
    params, x, y, task_losses = make_problem()
    method = mtopt.linear([1.0, 0.5, 2.0])
    light = mtopt.value_and_grad(task_losses, method, shared=is_trunk, low_memory=True,
                                 diagnostics=True)
    full = mtopt.value_and_grad(task_losses, method, shared=is_trunk, diagnostics=True)
    state = method.init(NUM_TASKS)
    (g_l, i_l, _), (g_f, i_f, _) = jax.jit(
        lambda p, x, y: [f(p, state, x, y) for f in (light, full)])(params, x, y)
    scale = float(jnp.max(jnp.abs(i_f.gramian)))
    np.testing.assert_allclose(i_l.gramian, i_f.gramian, rtol=GRAM_RTOL, atol=GRAM_RTOL * scale)
    np.testing.assert_allclose(i_l.cosines, i_f.cosines, atol=1e-4)
    np.testing.assert_array_equal(i_l.weights, jnp.asarray([1.0, 0.5, 2.0], jnp.float32))
    chex.assert_trees_all_close(g_l, g_f, rtol=1e-4, atol=1e-6)


def test_gramian_over_shared_and_over_every_parameter():
    """Light Gramians equal J J^T computed directly: over every leaf, and over the trunk."""
    params, x, y, task_losses = make_problem()
    method = mtopt.mgda()
    every = mtopt.value_and_grad(task_losses, method, low_memory=True)
    trunk = mtopt.value_and_grad(task_losses, method, low_memory=True, shared=is_trunk)
    state = method.init(NUM_TASKS)
    (_, i_every, _), (_, i_trunk, _), jac = jax.jit(
        lambda p, x, y: (every(p, state, x, y), trunk(p, state, x, y),
                         jax.jacrev(task_losses)(p, x, y)))(params, x, y)

    def direct(tree):
        rows = jnp.concatenate([leaf.reshape((NUM_TASKS, -1)) for leaf in jax.tree.leaves(tree)],
                               axis=1)
        return rows @ rows.T

    for got, expected in ((i_every.gramian, direct(jac)), (i_trunk.gramian, direct(jac["trunk"]))):
        np.testing.assert_allclose(got, expected, rtol=1e-4,
                                   atol=1e-5 * float(jnp.max(jnp.abs(expected))))
        np.testing.assert_array_equal(got, got.T)
    # The heads' contribution is not negligible here, so the two really differ.
    assert not np.allclose(i_every.gramian, i_trunk.gramian, rtol=1e-2)


class JitVmapTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit(self):
        params, x, y, task_losses = make_problem()
        method = mtopt.upgrad()
        state = method.init(NUM_TASKS)
        light = self.variant(mtopt.value_and_grad(task_losses, method, shared=is_trunk,
                                                  low_memory=True))
        g_l, i_l, s_l = light(params, state, x, y)
        g_f, i_f, s_f = jax.jit(mtopt.value_and_grad(task_losses, method, shared=is_trunk))(
            params, state, x, y)
        assert_steps_match([(g_l, i_l.gramian, i_l.weights, i_l.losses, i_l.total)],
                           [(g_f, i_f.gramian, i_f.weights, i_f.losses, i_f.total)], s_l, s_f,
                           "upgrad")

    def test_vmap_over_batches_and_parameters(self):
        """vmap over 3 (parameters, batch) pairs, state and key: each equals its own step."""
        runs = [make_problem(seed=s) for s in range(3)]
        task_losses = runs[0][3]
        params = jax.tree.map(lambda *a: jnp.stack(a), *[r[0] for r in runs])
        xs = jnp.stack([r[1] for r in runs])
        ys = jnp.stack([r[2] for r in runs])
        method = mtopt.pcgrad()  # stochastic: a key per run
        keys = jax.random.split(jax.random.key(3), 3)
        states = jax.tree.map(lambda *a: jnp.stack(a), *[method.init(NUM_TASKS)] * 3)
        light = mtopt.value_and_grad(task_losses, method, shared=is_trunk, low_memory=True)
        full = mtopt.value_and_grad(task_losses, method, shared=is_trunk)
        batched = jax.jit(jax.vmap(lambda p, s, x, y, k: light(p, s, x, y, key=k)))
        g_b, i_b, _ = batched(params, states, xs, ys, keys)
        for r in range(3):
            one = lambda t: jax.tree.map(lambda a: a[r], t)  # noqa: E731
            g_f, i_f, _ = jax.jit(full)(one(params), method.init(NUM_TASKS), xs[r], ys[r],
                                        key=keys[r])
            scale = float(jnp.max(jnp.abs(i_f.gramian)))
            np.testing.assert_allclose(i_b.gramian[r], i_f.gramian, rtol=GRAM_RTOL,
                                       atol=GRAM_RTOL * scale)
            np.testing.assert_allclose(i_b.weights[r], i_f.weights, rtol=WEIGHT_RTOL,
                                       atol=WEIGHT_ATOL)
            chex.assert_trees_all_close(one(g_b), g_f, rtol=GRAD_RTOL, atol=1e-6)


def test_compiled_memory_does_not_hold_the_jacobian():
    """At T = 16 the full path's temporaries hold the 16 x P Jacobian; the light and
    structured paths' do not.

    A compile-time property (XLA's buffer assignment), not a timing: the light and
    structured paths' temporaries must stay below a third of the Jacobian's bytes
    while the full path's exceed them.
    """
    num_tasks = 16
    model = nnx.Sequential(nnx.Linear(64, 256, rngs=nnx.Rngs(0)), jax.nn.relu,
                           nnx.Linear(256, 256, rngs=nnx.Rngs(1)), jax.nn.relu,
                           nnx.Linear(256, num_tasks, rngs=nnx.Rngs(2)))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jnp.ones((8, 64), jnp.float32)
    y = jnp.zeros((8, num_tasks), jnp.float32)

    def task_losses(p, x, y):
        return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2, axis=0)

    num_params = sum(int(leaf.size) for leaf in jax.tree.leaves(params))
    jac_bytes = num_tasks * num_params * 4
    method = mtopt.mgda()
    temps = {}
    for path in ("jacobian", "low_memory", "structured", "auto"):
        step = mtopt.value_and_grad(task_losses, method, gramian=path)
        compiled = jax.jit(step).lower(params, method.init(num_tasks), x, y).compile()
        temps[path] = compiled.memory_analysis().temp_size_in_bytes
    assert temps["jacobian"] >= jac_bytes, (temps, jac_bytes)
    assert temps["low_memory"] < jac_bytes / 3, (temps, jac_bytes)
    # 8 rows and wide layers: the structured engine's kernel formula, and auto takes it.
    assert temps["structured"] < jac_bytes / 3, (temps, jac_bytes)
    assert temps["auto"] == temps["structured"], temps
