"""The structured Gramian engine equals the full Jacobian path on every model family."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtopt
from mtopt._src import structured

T = 3


@pytest.fixture(autouse=True)
def _user_code_promotion():
    """The models are written as users write them: biases broadcast by rank promotion."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


def _keys(seed: int, n: int) -> list:
    return list(jax.random.split(jax.random.key(seed), n))


def _normal(key, shape, dtype=jnp.float32, scale=0.5):
    return (scale * jax.random.normal(key, shape)).astype(dtype)


# --- models: (params, args, loss function returning (T,) losses) -------------------------


def mlp(dtype=jnp.float32):
    k = _keys(0, 7)
    params = {"w1": _normal(k[0], (5, 8), dtype), "b1": _normal(k[1], (8,), dtype),
              "w2": _normal(k[2], (6, 8), dtype),  # used transposed
              "heads": _normal(k[3], (T, 6), dtype)}
    x, y = _normal(k[4], (10, 5), dtype), _normal(k[5], (T, 10), dtype)

    def fn(p, x, y):
        h = jax.nn.relu(x @ p["w1"] + p["b1"])
        h = jnp.tanh(h @ p["w2"].T)
        z = jnp.einsum("nd,td->tn", h, p["heads"])
        return jnp.mean((z - y) ** 2, axis=1)

    return params, (x, y), fn


def cnn():
    k = _keys(1, 6)
    params = {"c1": _normal(k[0], (3, 3, 2, 4)), "c2": _normal(k[1], (3, 3, 2, 6)),
              "bias": _normal(k[2], (6,)), "head": _normal(k[3], (6, T))}
    x, y = _normal(k[4], (4, 9, 9, 2), scale=1.0), _normal(k[5], (4, T))

    def fn(p, x, y):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=dn)
        h = jax.nn.gelu(h)
        h = jax.lax.conv_general_dilated(h, p["c2"], (2, 2), ((1, 0), (0, 1)),
                                         dimension_numbers=dn, feature_group_count=2)
        h = jax.nn.relu(h + p["bias"])
        z = jnp.mean(h, axis=(1, 2)) @ p["head"]
        return jnp.mean((z - y) ** 2, axis=0)

    return params, (x, y), fn


def transformer():
    vocab, d, seq, n = 11, 8, 5, 3
    k = _keys(2, 9)
    params = {"embed": _normal(k[0], (vocab, d)), "qkv": _normal(k[1], (d, 3 * d)),
              "out": _normal(k[2], (d, d)), "ln_scale": 1.0 + _normal(k[3], (d,), scale=0.1),
              "ln_bias": _normal(k[4], (d,), scale=0.1), "task": _normal(k[5], (d, T))}
    tokens = jax.random.randint(k[6], (n, seq), 0, vocab)
    targets = jax.random.randint(k[7], (n, seq), 0, vocab)

    def layer_norm(h, p):
        mu = jnp.mean(h, -1, keepdims=True)
        var = jnp.mean((h - mu) ** 2, -1, keepdims=True)
        return (h - mu) * jax.lax.rsqrt(var + 1e-5) * p["ln_scale"] + p["ln_bias"]

    def fn(p, tokens, targets):
        h = p["embed"][tokens]  # (n, seq, d): a gather from the table
        q, kk, v = jnp.split(layer_norm(h, p) @ p["qkv"], 3, axis=-1)
        att = jax.nn.softmax(jnp.einsum("nsd,ntd->nst", q, kk) / np.sqrt(d), axis=-1)
        h = h + jnp.einsum("nst,ntd->nsd", att, v) @ p["out"]
        logits = layer_norm(h, p) @ p["embed"].T  # tied with the embedding
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        mix = jax.nn.softmax(jnp.mean(h, axis=(0, 1)) @ p["task"])  # per-task position weights
        return jnp.stack([jnp.mean(nll[:, i]) * (1 + mix[i]) for i in range(T)])

    return params, (tokens, targets), fn


def rnn():
    k = _keys(3, 6)
    params = {"wx": _normal(k[0], (3, 6)), "wh": _normal(k[1], (6, 6)),
              "h0": _normal(k[2], (6,)), "head": _normal(k[3], (6, T))}
    xs, y = _normal(k[4], (7, 4, 3), scale=1.0), _normal(k[5], (4, T))

    def fn(p, xs, y):
        def cell(h, x):
            h = jnp.tanh(x @ p["wx"] + h @ p["wh"])
            return h, h

        h, _ = jax.lax.scan(cell, jnp.broadcast_to(p["h0"], (4, 6)), xs)
        return jnp.mean((h @ p["head"] - y) ** 2, axis=0)

    return params, (xs, y), fn


def toy():
    params = jnp.array([0.5, -1.0, 2.0])
    return params, (), lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum((p - 1) ** 2), p[0] * p[1]])


@jax.custom_jvp
def _sin_gate(h, t):
    return h * jnp.sin(t)


@_sin_gate.defjvp
def _sin_gate_jvp(primals, tangents):
    (h, t), (dh, dt) = primals, tangents
    return _sin_gate(h, t), dh * jnp.sin(t) + h * jnp.cos(t) * dt


def odd():
    """Re-used and unrecognised sites: a square weight applied twice, a checkpointed
    scale, a custom_jvp gate, a sort, a data-dependent cond and dynamic slice."""
    k = _keys(4, 6)
    params = {"w": _normal(k[0], (4, 4)), "s": 1.0 + _normal(k[1], (4,), scale=0.1),
              "t": _normal(k[2], (4,)), "table": _normal(k[3], (5, 4))}
    x, y = _normal(k[4], (6, 4), scale=1.0), _normal(k[5], (T, 6))
    row = jnp.int32(2)

    def fn(p, x, y):
        h = jnp.tanh(x @ p["w"])
        h = jnp.tanh(h @ p["w"])  # the same weight on a second input
        h = jax.checkpoint(lambda h, s: h * s)(h, p["s"])
        h = jnp.sort(_sin_gate(h, p["t"]), axis=-1)
        h = jax.lax.cond(jnp.sum(x) > 0, lambda h: h + p["t"], lambda h: h - p["t"], h)
        h = h + jax.lax.dynamic_slice(p["table"], (row + (jnp.sum(x) > 0), 0), (1, 4))
        z = h[:, :T].T
        return jnp.mean((z - y) ** 2, axis=1)

    return params, (x, y), fn


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer, "rnn": rnn, "toy": toy,
          "odd": odd}


def reference(fn, params, args, mask=None, jac=None):
    """The whole Jacobian (jitted) and its Gramian over the ``mask`` leaves, in float64."""
    jac = jax.jit(jax.jacrev(fn))(params, *args) if jac is None else jac
    leaves = jax.tree.leaves(jac)
    keep = [True] * len(leaves) if mask is None else jax.tree.leaves(mask)
    rows = [np.asarray(j, np.float64).reshape(T, -1) for j, k in zip(leaves, keep) if k]
    gram = sum(r @ r.T for r in rows)
    return jac, gram


# Every model with the automatic choice; both forced formulas on the models whose
# blocks take either (the rest of the grid in the slow run).
_CASES = [pytest.param(formula, name, marks=() if formula == "auto" or name in ("mlp", "odd")
                       else pytest.mark.slow)
          for formula in ("auto", "kernel", "explicit") for name in sorted(MODELS)]


@pytest.mark.parametrize("formula,name", _CASES)
def test_gramian_and_gradient_equal_the_full_jacobian(name, formula):
    params, args, fn = MODELS[name]()
    jac, gram = reference(fn, params, args)
    mask = jax.tree.map(lambda _: True, params)

    @jax.jit
    def engine(params, w):
        e = structured.run(fn, params, args, {}, has_aux=False, mask=mask,
                           wants_gramian=True, formula=formula)
        return e.gramian, e.pull(w, w), e.losses

    w = jnp.array([0.7, -0.2, 1.3])
    got_gram, got_grads, got_losses = engine(params, w)
    scale = np.max(np.abs(gram))
    np.testing.assert_allclose(np.asarray(got_gram), gram, atol=2e-5 * scale, rtol=1e-4)
    expected = jax.tree.map(lambda j: jnp.tensordot(w, j, 1), jac)
    chex.assert_trees_all_close(got_grads, expected, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(got_losses, fn(params, *args), rtol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "odd", pytest.param("transformer",
                                                            marks=pytest.mark.slow)])
def test_every_leaf_alone(name):
    """Per leaf: the Gramian over one leaf (``shared=`` selecting it) is that leaf's."""
    params, args, fn = MODELS[name]()
    jac, _ = reference(fn, params, args)
    # the transformer's tied embedding (gather + dot), a LayerNorm scale, a projection
    leaves = ["embed", "ln_scale", "qkv"] if name == "transformer" else list(params)
    for leaf in leaves:
        mask = {k: k == leaf for k in params}
        _, gram = reference(fn, params, args, mask, jac)
        engine = structured.run(fn, params, args, {}, has_aux=False, mask=mask,
                                wants_gramian=True)
        np.testing.assert_allclose(np.asarray(engine.gramian), gram,
                                   atol=2e-5 * np.max(np.abs(gram)), rtol=1e-4, err_msg=leaf)


def test_sites_found_and_formula_chosen():
    """The engine finds the re-used weight's two sites as one group with the kernel
    form, and takes the unrecognised primitives whole."""
    params, args, fn = odd()
    traced, leaves, arrays = structured.trace(fn, params, args, {}, False)
    tracer, *_ = structured.forward(traced, leaves, arrays, None)
    names = [None if s.eqn is None else s.eqn.primitive.name for s in tracer.sites]
    order = sorted(params)  # dict leaves flatten in key order
    by_leaf = {order[g.leaves[0]]: g for g in structured.groups(tracer.sites)}
    assert [names[s] for s in by_leaf["w"].sites] == ["dot_general", "dot_general"]
    assert structured.kernel_views(by_leaf["w"], tracer.sites) is not None
    assert {"custom_jvp_call", "cond", "dynamic_slice"} <= set(names)
    assert structured.kernel_views(by_leaf["t"], tracer.sites) is None


def test_flax_nnx_model():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.body = nnx.Linear(5, 8, rngs=rngs)
            self.norm = nnx.LayerNorm(8, rngs=rngs)
            self.head = nnx.Linear(8, T, rngs=rngs)

        def __call__(self, x):
            return self.head(jax.nn.relu(self.norm(self.body(x))))

    graphdef, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
    x, y = _normal(jax.random.key(5), (10, 5)), _normal(jax.random.key(6), (10, T))

    def fn(state, x, y):
        return jnp.mean((nnx.merge(graphdef, state)(x) - y) ** 2, axis=0)

    m = mtopt.upgrad()
    out = {path: jax.jit(mtopt.value_and_grad(fn, m, gramian=path))(state, m.init(T), x, y)
           for path in ("jacobian", "structured")}
    np.testing.assert_allclose(out["structured"][1].gramian, out["jacobian"][1].gramian,
                               rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(out["structured"][0], out["jacobian"][0], atol=1e-6, rtol=1e-4)


def _penalised(fn):
    def with_penalty(p, *args):
        return mtopt.Objectives(fn(p, *args), penalty=1e-2 * sum(
            jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(p)))

    return with_penalty


@pytest.mark.parametrize("method,name", [
    ("upgrad", "mlp"), ("mgda", "mlp"), ("upgrad", "transformer"),
    pytest.param("mgda", "transformer", marks=pytest.mark.slow)])
def test_value_and_grad_structured_equals_jacobian_path_under_jit(name, method):
    params, args, fn = MODELS[name]()
    fn = _penalised(fn)
    shared = lambda path, leaf: "head" not in jax.tree_util.keystr(path)  # noqa: E731
    m = getattr(mtopt, method)()
    outs = {}
    for path in ("jacobian", "structured"):
        step = jax.jit(mtopt.value_and_grad(fn, m, shared=shared, gramian=path))
        outs[path] = step(params, m.init(T), *args)
    (g_full, info_full, _), (g_str, info_str, _) = outs["jacobian"], outs["structured"]
    np.testing.assert_allclose(info_str.gramian, info_full.gramian, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(info_str.weights, info_full.weights, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(info_str.total, info_full.total, rtol=1e-5)
    chex.assert_trees_all_close(g_str, g_full, atol=1e-5, rtol=1e-3)


def test_vmap_over_seeds_and_no_retrace():
    params, args, fn = mlp()
    m = mtopt.upgrad()
    step = mtopt.value_and_grad(fn, m, gramian="structured")
    full = mtopt.value_and_grad(fn, m, gramian="jacobian")
    batch = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)
    state = jax.vmap(lambda _: m.init(T))(jnp.arange(2))
    got = jax.jit(jax.vmap(lambda p, s: step(p, s, *args)[1].gramian))(batch, state)
    want = jax.jit(jax.vmap(lambda p, s: full(p, s, *args)[1].gramian))(batch, state)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train(p, s):
        grads, _, s = step(p, s, *args)
        return jax.tree.map(lambda a, g: a - 0.1 * g, p, grads), s

    p, s = params, m.init(T)
    for _ in range(5):
        p, s = train(p, s)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(p))


def test_float64_and_aux_and_keyword_arguments():
    with jax.enable_x64(True):
        params, args, fn = mlp(jnp.float64)

        def loss(p, x, y, *, scale):
            losses = scale * fn(p, x, y)
            return losses, {"first": losses[0]}

        m = mtopt.mgda()
        out = {path: jax.jit(mtopt.value_and_grad(loss, m, has_aux=True, gramian=path),
                             static_argnames="scale")(params, m.init(T), *args, scale=2.0)
               for path in ("jacobian", "structured")}
        assert out["structured"][1].gramian.dtype == jnp.float64
        np.testing.assert_allclose(out["structured"][1].gramian, out["jacobian"][1].gramian,
                                   rtol=1e-10)
        np.testing.assert_allclose(out["structured"][1].aux["first"],
                                   out["jacobian"][1].aux["first"])


def test_refusals_name_the_reason():
    params, args, fn = mlp()
    with pytest.raises(ValueError, match="reads the Jacobian itself"):
        mtopt.value_and_grad(fn, mtopt.graddrop(), gramian="structured")
    with pytest.raises(ValueError, match="return_task_grads"):
        mtopt.value_and_grad(fn, mtopt.mgda(), gramian="structured", return_task_grads=True)
    with pytest.raises(ValueError, match="micro_batches"):
        mtopt.value_and_grad(fn, mtopt.mgda(), gramian="structured", micro_batches=2)
    with pytest.raises(ValueError, match="gramian"):
        mtopt.value_and_grad(fn, mtopt.mgda(), gramian="fast")
    with pytest.raises(ValueError, match="low_memory"):
        mtopt.value_and_grad(fn, mtopt.mgda(), gramian="structured", low_memory=True)


def test_loss_only_method_on_the_structured_path_forms_no_gramian():
    params, args, fn = mlp()
    m = mtopt.linear([1.0, 2.0, 0.5])
    g_str, info, _ = mtopt.value_and_grad(fn, m, gramian="structured")(params, m.init(T), *args)
    g_ref, _, _ = mtopt.value_and_grad(fn, m)(params, m.init(T), *args)
    assert info.gramian is None
    chex.assert_trees_all_close(g_str, g_ref, rtol=1e-5)


def _wide_mlp():
    """8 rows, wide layers: every trunk block by the kernel formula."""
    k = _keys(7, 4)
    params = {"w1": _normal(k[0], (64, 128), scale=0.1), "w2": _normal(k[1], (128, 128),
                                                                       scale=0.1),
              "heads": _normal(k[2], (128, 16), scale=0.1)}
    x, y = _normal(k[3], (8, 64)), jnp.zeros((8, 16))

    def fn(p, x, y):
        return jnp.mean((jnp.tanh(jnp.tanh(x @ p["w1"]) @ p["w2"]) @ p["heads"] - y) ** 2, 0)

    return params, (x, y), fn


def test_auto_takes_the_structured_engine_where_the_kernel_covers_the_gramian():
    """gramian='auto': the structured engine for the wide MLP (kernel share 1), the
    Jacobian path for the CNN (share 0); the compiled programs are those paths'."""
    shared = lambda path, leaf: "head" not in jax.tree_util.keystr(path)  # noqa: E731
    for model, expected in ((_wide_mlp, "structured"), (cnn, "jacobian")):
        params, args, fn = model()
        mask = jax.tree_util.tree_map_with_path(shared, params)
        share = structured.kernel_share(fn, params, args, {}, has_aux=False, mask=mask)
        assert share == (1.0 if expected == "structured" else 0.0), (model, share)
        m = mtopt.upgrad()
        texts = {path: jax.jit(mtopt.value_and_grad(fn, m, shared=shared, gramian=path)).lower(
            params, m.init(16 if model is _wide_mlp else T), *args).as_text()
            for path in ("auto", expected)}
        assert texts["auto"] == texts[expected], model
