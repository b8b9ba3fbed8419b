"""The three model libraries (equinox, flax.linen, flax.nnx) give the plain-pytree answer.

One model, a ReLU trunk and two linear heads, is written four times with the same
weights: as a plain dict, an ``eqx.Module`` (with its activation function as a
non-array leaf), linen variables and an nnx state. Through the loss-only path
(``equal``), the Gramian path (``upgrad``), the low-memory path and the
representation mode (``mgda``), the weights and the gradients (mapped back to the
plain layout) equal the plain pytree's; keyword arguments reach the loss function.
"""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mtopt


@pytest.fixture(autouse=True)
def _user_code_promotion():
    """Model libraries are user code: they broadcast biases (rank promotion) and mix
    dtypes as JAX's defaults allow; the suite's conftest makes both strict."""
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        yield


DIM, WIDTH, N = 3, 5, 8
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(N, DIM)), jnp.float32)
Y = jnp.asarray(RNG.normal(size=(N, 2)), jnp.float32)
PLAIN = {
    "w": jnp.asarray(RNG.normal(size=(DIM, WIDTH)) / 2, jnp.float32),
    "b": jnp.asarray(RNG.normal(size=WIDTH) / 4, jnp.float32),
    "ha": jnp.asarray(RNG.normal(size=(WIDTH, 1)), jnp.float32),
    "hab": jnp.asarray(RNG.normal(size=1), jnp.float32),
    "hb": jnp.asarray(RNG.normal(size=(WIDTH, 1)), jnp.float32),
    "hbb": jnp.asarray(RNG.normal(size=1), jnp.float32),
}


def _losses_from(z, out_a, out_b, y, scale):
    del z
    return {"a": scale * jnp.mean((out_a[:, 0] - y[:, 0]) ** 2),
            "b": jnp.mean((out_b[:, 0] + y[:, 1]) ** 2)}


# --- plain pytree -----------------------------------------------------------------------
def plain_encode(p, x, y, *, scale):
    return jax.nn.relu(x @ p["w"] + p["b"])


def plain_heads(p, z, x, y, *, scale):
    return _losses_from(z, z @ p["ha"] + p["hab"], z @ p["hb"] + p["hbb"], y, scale)


def plain_losses(p, x, y, *, scale):
    return plain_heads(p, plain_encode(p, x, y, scale=scale), x, y, scale=scale)


# --- equinox ----------------------------------------------------------------------------
class EqxModel(eqx.Module):
    trunk: eqx.nn.Linear
    head_a: eqx.nn.Linear
    head_b: eqx.nn.Linear
    activation: object  # a function: a non-array leaf

    def __init__(self):
        keys = jax.random.split(jax.random.key(0), 3)
        trunk = eqx.nn.Linear(DIM, WIDTH, key=keys[0])
        head_a, head_b = eqx.nn.Linear(WIDTH, 1, key=keys[1]), eqx.nn.Linear(WIDTH, 1, key=keys[2])
        set_ = lambda layer, w, b: eqx.tree_at(lambda m: (m.weight, m.bias), layer, (w.T, b))  # noqa: E731
        self.trunk = set_(trunk, PLAIN["w"], PLAIN["b"])
        self.head_a = set_(head_a, PLAIN["ha"], PLAIN["hab"])
        self.head_b = set_(head_b, PLAIN["hb"], PLAIN["hbb"])
        self.activation = jax.nn.relu


def eqx_encode(m, x, y, *, scale):
    return m.activation(jax.vmap(m.trunk)(x))


def eqx_heads(m, z, x, y, *, scale):
    return _losses_from(z, jax.vmap(m.head_a)(z), jax.vmap(m.head_b)(z), y, scale)


def eqx_losses(m, x, y, *, scale):
    return eqx_heads(m, eqx_encode(m, x, y, scale=scale), x, y, scale=scale)


def eqx_to_plain(m):
    return {"w": m.trunk.weight.T, "b": m.trunk.bias, "ha": m.head_a.weight.T,
            "hab": m.head_a.bias, "hb": m.head_b.weight.T, "hbb": m.head_b.bias}


# --- flax.linen -------------------------------------------------------------------------
class LinenTrunk(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Dense(WIDTH, name="trunk")(x))


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        z = LinenTrunk(name="encoder")(x)
        return z, nn.Dense(1, name="head_a")(z), nn.Dense(1, name="head_b")(z)


LINEN = LinenModel()
LINEN_PARAMS = {
    "encoder": {"trunk": {"kernel": PLAIN["w"], "bias": PLAIN["b"]}},
    "head_a": {"kernel": PLAIN["ha"], "bias": PLAIN["hab"]},
    "head_b": {"kernel": PLAIN["hb"], "bias": PLAIN["hbb"]},
}


def linen_losses(params, x, y, *, scale):
    return _losses_from(*LINEN.apply({"params": params}, x), y, scale)


def linen_encode(params, x, y, *, scale):
    return LinenTrunk().apply({"params": params["encoder"]}, x)


def linen_heads(params, z, x, y, *, scale):
    out_a = nn.Dense(1).apply({"params": params["head_a"]}, z)
    out_b = nn.Dense(1).apply({"params": params["head_b"]}, z)
    return _losses_from(z, out_a, out_b, y, scale)


def linen_to_plain(p):
    return {"w": p["encoder"]["trunk"]["kernel"], "b": p["encoder"]["trunk"]["bias"],
            "ha": p["head_a"]["kernel"], "hab": p["head_a"]["bias"],
            "hb": p["head_b"]["kernel"], "hbb": p["head_b"]["bias"]}


# --- flax.nnx ---------------------------------------------------------------------------
class NnxModel(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.trunk = nnx.Linear(DIM, WIDTH, rngs=rngs)
        self.head_a, self.head_b = nnx.Linear(WIDTH, 1, rngs=rngs), nnx.Linear(WIDTH, 1, rngs=rngs)
        for layer, w, b in ((self.trunk, "w", "b"), (self.head_a, "ha", "hab"),
                            (self.head_b, "hb", "hbb")):
            layer.kernel[...], layer.bias[...] = PLAIN[w], PLAIN[b]


NNX_GRAPHDEF, NNX_STATE = nnx.split(NnxModel())


def nnx_encode(state, x, y, *, scale):
    return jax.nn.relu(nnx.merge(NNX_GRAPHDEF, state).trunk(x))


def nnx_heads(state, z, x, y, *, scale):
    model = nnx.merge(NNX_GRAPHDEF, state)
    return _losses_from(z, model.head_a(z), model.head_b(z), y, scale)


def nnx_losses(state, x, y, *, scale):
    return nnx_heads(state, nnx_encode(state, x, y, scale=scale), x, y, scale=scale)


def nnx_to_plain(state):
    value = lambda v: v.get_value() if isinstance(v, nnx.Variable) else v  # noqa: E731
    return {"w": value(state["trunk"]["kernel"]), "b": value(state["trunk"]["bias"]),
            "ha": value(state["head_a"]["kernel"]), "hab": value(state["head_a"]["bias"]),
            "hb": value(state["head_b"]["kernel"]), "hbb": value(state["head_b"]["bias"])}


LIBRARIES = {
    "equinox": (EqxModel(), eqx_losses, eqx_encode, eqx_heads, eqx_to_plain, eqx.filter_jit),
    "linen": (LINEN_PARAMS, linen_losses, linen_encode, linen_heads, linen_to_plain, jax.jit),
    "nnx": (NNX_STATE, nnx_losses, nnx_encode, nnx_heads, nnx_to_plain, jax.jit),
}
PATHS = {
    "loss_only": ("equal", {}),
    "gramian": ("upgrad", {}),
    "low_memory": ("upgrad", {"low_memory": True}),
    "representation": ("mgda", {"representation": True}),
}


def _step(method, losses, encode, heads, options):
    if options.get("representation"):
        return mtopt.representation_value_and_grad(encode, heads, method)
    return mtopt.value_and_grad(losses, method, **options)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_library_model_gives_the_plain_pytree_answer(library, path):
    params, losses, encode, heads, to_plain, jit = LIBRARIES[library]
    name, options = PATHS[path]
    method = mtopt.method(name)
    assert to_plain(params)["w"].shape == (DIM, WIDTH)
    np.testing.assert_array_equal(np.asarray(to_plain(params)["w"]), np.asarray(PLAIN["w"]))
    ref_grads, ref_info, _ = jax.jit(
        _step(method, plain_losses, plain_encode, plain_heads, options),
        static_argnames="scale")(PLAIN, method.init(2), X, Y, scale=3.0)
    grads, info, _ = jit(_step(method, losses, encode, heads, options))(
        params, method.init(2), X, Y, scale=3.0)
    np.testing.assert_allclose(np.asarray(info.losses), np.asarray(ref_info.losses), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(info.weights), np.asarray(ref_info.weights),
                               rtol=1e-4, atol=1e-6)
    for key, ref in ref_grads.items():
        np.testing.assert_allclose(np.asarray(to_plain(grads)[key]).reshape(ref.shape),
                                   np.asarray(ref), rtol=1e-4, atol=1e-5, err_msg=key)


def test_equinox_gradients_have_none_where_the_module_has_no_array():
    model = EqxModel()
    method = mtopt.mgda()
    grads, _, _ = eqx.filter_jit(mtopt.value_and_grad(eqx_losses, method))(
        model, method.init(2), X, Y, scale=1.0)
    assert grads.activation is None
    expected = eqx.filter_grad(
        lambda m: sum(eqx_losses(m, X, Y, scale=1.0).values()))(model)
    assert jax.tree.structure(grads) == jax.tree.structure(expected)


def test_trainable_selects_the_leaves_and_integer_arrays_need_it():
    params = {"w": PLAIN["w"], "step": jnp.array(3, jnp.int32)}
    fn = lambda p, x: {"a": jnp.sum((x @ p["w"]) ** 2), "b": jnp.sum(x @ p["w"])}  # noqa: E731
    method = mtopt.upgrad()
    with pytest.raises(TypeError, match=r"\['step'\] \(dtype int32\).*trainable="):
        mtopt.value_and_grad(fn, method)(params, method.init(2), X)
    grads, _, _ = mtopt.value_and_grad(fn, method, trainable=eqx.is_inexact_array)(
        params, method.init(2), X)
    assert grads["step"] is None and grads["w"].shape == (DIM, WIDTH)
    with pytest.raises(ValueError, match="no leaf of params is trainable"):
        mtopt.value_and_grad(fn, method, trainable=lambda leaf: False)(params, method.init(2), X)


def test_linen_batch_stats_and_keyword_arguments_are_threaded():
    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            z = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(4)(x))
            z = nn.Dropout(0.5, deterministic=not train)(z)
            return nn.Dense(2)(z)

    model = WithBatchNorm()
    variables = model.init(jax.random.key(0), X, train=False)

    def fn(params, batch_stats, x, y, *, train, rngs=None):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                   train=train, rngs=rngs, mutable=["batch_stats"])
        return ({"a": jnp.mean((out[:, 0] - y[:, 0]) ** 2),
                 "b": jnp.mean((out[:, 1] - y[:, 1]) ** 2)}, updates["batch_stats"])

    method = mtopt.upgrad()
    step = jax.jit(mtopt.value_and_grad(fn, method, has_aux=True), static_argnames="train")
    grads, info, _ = step(variables["params"], method.init(2), variables["batch_stats"], X, Y,
                          train=True, rngs={"dropout": jax.random.key(1)})
    new_stats = info.aux
    mean = new_stats["BatchNorm_0"]["mean"]
    batch_mean = jnp.mean(X @ variables["params"]["Dense_0"]["kernel"]
                          + variables["params"]["Dense_0"]["bias"], axis=0)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(0.5 * batch_mean), rtol=1e-5,
                               atol=1e-6)  # momentum 0.5 from zeros
    other, _, _ = step(variables["params"], method.init(2), variables["batch_stats"], X, Y,
                       train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(np.asarray(grads["Dense_1"]["kernel"]),
                           np.asarray(other["Dense_1"]["kernel"]))  # the dropout key is used
