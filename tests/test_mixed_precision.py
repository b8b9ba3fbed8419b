"""bfloat16 models: float32 Gramians and weights, bfloat16 gradients, weights close to float32.

The bf16 model is a flax nnx MLP with ``param_dtype=dtype=jnp.bfloat16`` (Dense,
LayerNorm, Dense, one Dense head per task; activations in bf16, the task losses
cast to float32). Its float32 twin has the *same* parameter values (the bf16
values cast up, so exactly representable) and sees the same batch.

Measured weight errors (max |w_bf16 - w_f32| / max |w_f32|, 16 problems: two
widths, 6-10 seeds, T = 3): every Gramian method of the registry stays below
5e-3 on well-conditioned problems (the Gramian itself differs by 1e-3 relative:
bf16 gradients carry ~2^-9 relative rounding). Tolerance here: 2e-2.

Sensitive methods: with two nearly collinear task gradients (two heads equal,
targets 5% apart) the Gramian is nearly singular and methods that solve a linear
system or an eigenproblem in it amplify the bf16 rounding: IMTL-G / IMTL and
ConFIG up to 0.15, CAGrad 0.15, MGDA 0.08, Aligned-MTL 0.03 (measured, 6
seeds). UPGrad, DualProj, PCGrad, GradVac, Nash-MTL, FairGrad, EPO, PMTL and
GradNorm stay below 3e-3 there. ``test_near_collinear_sensitivity`` pins both.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mtopt

NUM_TASKS = 3
WIDTH = 32
WEIGHT_TOL = 2e-2
SENSITIVE = ("mgda", "cagrad", "imtl_g", "imtl", "config", "aligned_mtl")
SENSITIVE_TOL = 0.5  # measured up to 0.15
GRAMIAN_METHODS = tuple(
    n for n in mtopt.method_names() if mtopt.method_info(n).needs is mtopt.Needs.GRAMIAN
)


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype):
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.l1 = nnx.Linear(8, WIDTH, **kw)
        self.ln = nnx.LayerNorm(WIDTH, **kw)
        self.l2 = nnx.Linear(WIDTH, WIDTH, **kw)
        self.heads = nnx.List([nnx.Linear(WIDTH, 1, **kw) for _ in range(NUM_TASKS)])

    def __call__(self, x):
        z = jnp.tanh(self.l2(jax.nn.relu(self.ln(self.l1(x)))))
        return [head(z)[:, 0] for head in self.heads]


def is_trunk(path, leaf):
    del leaf
    return getattr(path[0], "key", None) != "heads"


def make_models(seed=0, collinear=False):
    """``(f_bf16, params_bf16, f_f32, params_f32, x, y)`` with identical parameter values."""
    model = Net(nnx.Rngs(seed), jnp.bfloat16)
    if collinear:  # heads 0 and 1 equal and targets 5% apart: nearly collinear gradients
        model.heads[1].kernel[...] = model.heads[0].kernel[...]
        model.heads[1].bias[...] = model.heads[0].bias[...]
    graph_b, params_b = nnx.split(model, nnx.Param)
    graph_f, _ = nnx.split(Net(nnx.Rngs(seed), jnp.float32), nnx.Param)
    params_f = jax.tree.map(lambda a: a.astype(jnp.float32), params_b)
    kx, ky = jax.random.split(jax.random.key(seed + 100))
    x = jax.random.normal(kx, (64, 8), jnp.float32)
    y = jax.random.normal(ky, (64, NUM_TASKS), jnp.float32)
    y = y * jnp.asarray([1.0, -2.0, 3.0], jnp.float32)[None, :]
    if collinear:
        y = y.at[:, 1].set(y[:, 0] + jnp.float32(0.05) * y[:, 1])

    def losses_of(graph, dtype):
        def task_losses(params, x, y):
            # flax's LayerNorm computes its statistics in float32 by promoting bf16 inputs
            # implicitly, which conftest's strict promotion rejects: standard promotion for
            # the model only (mtopt's own code runs under strict).
            with jax.numpy_dtype_promotion("standard"):
                outs = nnx.merge(graph, params)(x.astype(dtype))
            return jnp.stack([jnp.mean((o.astype(jnp.float32) - y[:, i]) ** 2)
                              for i, o in enumerate(outs)])

        return task_losses

    return (losses_of(graph_b, jnp.bfloat16), params_b, losses_of(graph_f, jnp.float32),
            params_f, x, y)


def trunk_gramians(seeds, collinear=False):
    """Per seed: (G_bf16, losses_bf16, G_f32, losses_f32), each path in one vmapped jit."""
    problems = [make_models(s, collinear) for s in seeds]
    f_b, f_f = problems[0][0], problems[0][2]
    stack = lambda i: jax.tree.map(lambda *a: jnp.stack(a), *[p[i] for p in problems])  # noqa: E731
    xs, ys = stack(4), stack(5)
    method = mtopt.mgda()

    def gram(f):
        step = mtopt.value_and_grad(f, method, shared=is_trunk)

        def one(p, x, y):
            _, info, _ = step(p, method.init(NUM_TASKS), x, y)
            return info.gramian, info.losses

        return one

    g_b, l_b = jax.jit(jax.vmap(gram(f_b)))(stack(1), xs, ys)
    g_f, l_f = jax.jit(jax.vmap(gram(f_f)))(stack(3), xs, ys)
    return g_b, l_b, g_f, l_f


def method_weights(name, gramians, losses):
    """The method's first-step weights on a batch of Gramians (one vmapped jit per method)."""
    return _weights_fn(name)(gramians, losses)


@functools.lru_cache(maxsize=None)
def _weights_fn(name):
    method = (mtopt.method(name, preferences=jnp.eye(NUM_TASKS, dtype=jnp.float32))
              if name == "pmtl" else mtopt.method(name))
    info = mtopt.method_info(name)
    kwargs = {}
    if info.stochastic:
        kwargs["key"] = jax.random.key(1)
    if info.preference:
        kwargs["preference"] = jnp.asarray([0.2, 0.3, 0.5], jnp.float32)

    def one(g, l):
        return method.update(method.init(NUM_TASKS), l, gramian=g, **kwargs)[0]

    return jax.jit(jax.vmap(one))


def relative_weight_error(w_b, w_f):
    """Per problem: max |w_b - w_f| / max |w_f|."""
    w_b, w_f = np.asarray(w_b, np.float64), np.asarray(w_f, np.float64)
    return np.max(np.abs(w_b - w_f), axis=-1) / np.max(np.abs(w_f), axis=-1)


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def well_conditioned():
    return trunk_gramians(SEEDS)


@pytest.fixture(scope="module")
def near_collinear():
    return trunk_gramians(SEEDS, collinear=True)


# --- mtopt.gramian of bf16 Jacobians ---------------------------------------------------------


class GramianTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_gramian_of_bf16_jacobian_is_float32(self):
        """Small leaf and a leaf large enough for the blocked CPU product (> 2 x 2 MB)."""
        rng = np.random.default_rng(0)
        jac32 = {"small": jnp.asarray(rng.normal(size=(4, 5, 7)), jnp.float32),
                 "large": jnp.asarray(rng.normal(size=(4, 600_000)) * 1e-3, jnp.float32)}
        jac16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), jac32)
        gram16 = self.variant(mtopt.gramian)(jac16)
        assert gram16.dtype == jnp.float32 and gram16.shape == (4, 4)
        # Same values: float32 accumulation of the bf16 numbers, against a float64 product.
        rows = np.concatenate([np.asarray(leaf.astype(jnp.float32), np.float64).reshape(4, -1)
                               for leaf in jax.tree.leaves(jac16)], axis=1)
        exact = rows @ rows.T
        np.testing.assert_allclose(gram16, exact, rtol=1e-5, atol=1e-6 * np.abs(exact).max())
        # Against the unrounded float32 Jacobian: within bf16 rounding, |dG_ij| <= 2u |g_i||g_j|.
        gram32 = np.asarray(mtopt.gramian(jac32), np.float64)
        norms = np.sqrt(np.diag(gram32))
        bound = 2 * 2.0**-8 * np.outer(norms, norms)
        assert np.all(np.abs(np.asarray(gram16, np.float64) - gram32) <= bound)
        assert np.abs(np.asarray(gram16, np.float64) - gram32).max() > 0  # it did round

    def test_task_jacobian_of_bf16_model(self):
        f_b, params_b, _, _, x, y = make_models()
        _, jac, _ = jax.jit(mtopt.task_jacobian(f_b))(params_b, x, y)
        leaves = jax.tree.leaves(jac)
        assert all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
        gram = jax.jit(mtopt.gramian)(jac)
        assert gram.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(gram)))
        np.testing.assert_allclose(gram, gram.T, rtol=1e-6)


# --- weights from the bf16 model vs the float32 model -----------------------------------------


def test_gramian_of_bf16_model_close_to_float32(well_conditioned):
    g_b, _, g_f, _ = well_conditioned
    assert g_b.dtype == jnp.float32
    err = np.max(np.abs(np.asarray(g_b) - np.asarray(g_f)), axis=(1, 2))
    err = err / np.max(np.abs(np.asarray(g_f)), axis=(1, 2))
    assert np.all(err < 1e-2), err  # measured <= 5e-3


@pytest.mark.parametrize("name", GRAMIAN_METHODS)
def test_weights_close_to_float32_model(name, well_conditioned):
    g_b, l_b, g_f, l_f = well_conditioned
    w_b = method_weights(name, g_b, l_b)
    w_f = method_weights(name, g_f, l_f)
    assert w_b.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(w_b)))
    err = relative_weight_error(w_b, w_f)
    assert np.all(err <= WEIGHT_TOL), (name, err)


def test_near_collinear_sensitivity(near_collinear):
    """Nearly collinear gradients: robust methods keep 2e-2, sensitive ones stay finite and 0.5."""
    g_b, l_b, g_f, l_f = near_collinear
    # The problem is nearly singular: smallest eigenvalue tiny relative to the largest.
    eig = np.linalg.eigvalsh(np.asarray(g_f, np.float64))
    assert np.all(eig[:, 0] < 2e-3 * eig[:, -1])  # measured 2e-4 to 1e-3
    worst_sensitive = 0.0
    for name in GRAMIAN_METHODS:
        w_b = method_weights(name, g_b, l_b)
        assert bool(jnp.all(jnp.isfinite(w_b))), name
        err = relative_weight_error(w_b, method_weights(name, g_f, l_f))
        tol = SENSITIVE_TOL if name in SENSITIVE else WEIGHT_TOL
        assert np.all(err <= tol), (name, err)
        if name in SENSITIVE:
            worst_sensitive = max(worst_sensitive, float(err.max()))
    # The case does separate the two groups (measured 0.07 on these seeds).
    assert worst_sensitive > WEIGHT_TOL


# --- the step on a bf16 model ------------------------------------------------------------------


@pytest.mark.parametrize("low_memory", [False, True])
def test_bf16_step(low_memory):
    """Gradients bf16 and shaped like the parameters; weights, Gramian, losses float32;
    close to the float32 twin's step."""
    f_b, params_b, f_f, params_f, x, y = make_models()
    method = mtopt.upgrad()
    state = method.init(NUM_TASKS)
    step_b = mtopt.value_and_grad(f_b, method, shared=is_trunk, low_memory=low_memory)
    step_f = mtopt.value_and_grad(f_f, method, shared=is_trunk)
    (g_b, i_b, _), (g_f, i_f, _) = jax.jit(
        lambda: (step_b(params_b, state, x, y), step_f(params_f, state, x, y)))()
    assert jax.tree.structure(g_b) == jax.tree.structure(params_b)
    for grad, param in zip(jax.tree.leaves(g_b), jax.tree.leaves(params_b)):
        assert grad.dtype == jnp.bfloat16 and grad.shape == param.shape
    for field in ("weights", "gramian", "losses", "total"):
        assert getattr(i_b, field).dtype == jnp.float32, field
    scale = float(jnp.max(jnp.abs(i_f.gramian)))
    np.testing.assert_allclose(i_b.gramian, i_f.gramian, atol=1e-2 * scale)
    assert relative_weight_error(i_b.weights, i_f.weights) <= WEIGHT_TOL
    # The combined gradient: bf16 rounding of every activation and gradient, ~1e-2 relative.
    for a, b in zip(jax.tree.leaves(g_b), jax.tree.leaves(g_f)):
        b = np.asarray(b, np.float64)
        err = np.max(np.abs(np.asarray(a.astype(jnp.float32), np.float64) - b))
        assert err <= 5e-2 * np.max(np.abs(b)) + 1e-6, err


def test_low_memory_bf16_matches_default_bf16():
    """Both paths of the bf16 model: same Gramian and weights to bf16 accuracy."""
    f_b, params_b, _, _, x, y = make_models(seed=1)
    method = mtopt.mgda()
    state = method.init(NUM_TASKS)
    light = mtopt.value_and_grad(f_b, method, shared=is_trunk, low_memory=True)
    full = mtopt.value_and_grad(f_b, method, shared=is_trunk)
    (g_l, i_l, _), (g_f, i_f, _) = jax.jit(
        lambda: (light(params_b, state, x, y), full(params_b, state, x, y)))()
    assert i_l.gramian.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(i_f.gramian)))
    np.testing.assert_allclose(i_l.gramian, i_f.gramian, atol=1e-2 * scale)
    assert relative_weight_error(i_l.weights, i_f.weights) <= WEIGHT_TOL
    for a, b in zip(jax.tree.leaves(g_l), jax.tree.leaves(g_f)):
        assert a.dtype == jnp.bfloat16
        a, b = np.asarray(a.astype(jnp.float32)), np.asarray(b.astype(jnp.float32))
        assert np.max(np.abs(a - b)) <= 5e-2 * np.max(np.abs(b)) + 1e-6
