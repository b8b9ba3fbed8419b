"""mtopt.checkpoint: bit-identical round trips, step bookkeeping, mismatch errors, resume."""

import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtopt
from mtopt import checkpoint


def assert_bit_identical(restored, original):
    """Same treedef, and per leaf: same type, dtype, shape and bits."""
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(original)):
        assert type(got) is type(want) or (
            isinstance(got, jax.Array) and isinstance(want, jax.Array)
        ), (type(got), type(want))
        if jnp.issubdtype(getattr(want, "dtype", np.float32), jax.dtypes.prng_key):
            assert got.dtype == want.dtype
            assert jax.random.key_impl(got) == jax.random.key_impl(want)
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        got, want = np.asarray(got), np.asarray(want)
        assert got.dtype == want.dtype and got.shape == want.shape
        # Compare the bits, so NaN payloads and -0.0 count too.
        assert got.tobytes() == want.tobytes()


def round_trip(tmp_path, tree, target=None):
    checkpoint.save(tmp_path, 0, tree)
    return checkpoint.restore(tmp_path, tree if target is None else target)


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, num_tasks: int = 2):
        self.trunk = nnx.Linear(3, 4, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(4, 1, rngs=rngs) for _ in range(num_tasks)])

    def __call__(self, x):
        h = jnp.tanh(self.trunk(x))
        return [head(h)[..., 0] for head in self.heads]


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.int32, jnp.uint8, jnp.bool_]
)
def test_array_dtypes_round_trip(tmp_path, dtype):
    x = jax.random.normal(jax.random.key(0), (3, 4)) * 100
    tree = {"x": x.astype(dtype), "scalar": jnp.asarray(7, dtype), "vec": jnp.arange(5).astype(dtype)}
    assert_bit_identical(round_trip(tmp_path, tree), tree)


def test_special_float_values_round_trip(tmp_path):
    tree = [jnp.array([jnp.nan, -0.0, jnp.inf, -jnp.inf, 1e-45, 3.4e38], jnp.float32)]
    assert_bit_identical(round_trip(tmp_path, tree), tree)


def test_python_and_numpy_leaves_round_trip(tmp_path):
    tree = {
        "int": 3, "float": 0.1, "bool": True, "np_scalar": np.float32(2.5),
        "np_array": np.arange(6, dtype=np.int64).reshape(2, 3), "f64": np.array([1 / 3]),
        "none": None, "empty_tuple": (), "nested": [{"a": 1.5}, (jnp.ones(2),)],
    }
    restored = round_trip(tmp_path, tree)
    assert_bit_identical(restored, tree)
    assert restored["int"] == 3 and isinstance(restored["int"], int)
    assert restored["float"] == 0.1 and isinstance(restored["float"], float)
    assert restored["bool"] is True
    assert isinstance(restored["np_array"], np.ndarray)


def test_zero_size_arrays_round_trip(tmp_path):
    # orbax refuses zero-size arrays; their shape and dtype are kept in the metadata.
    tree = {"empty": jnp.zeros((0, 3), jnp.bfloat16), "full": jnp.ones(2), "keys": jax.random.split(
        jax.random.key(0), 0)}
    assert_bit_identical(round_trip(tmp_path, tree), tree)


def test_only_empty_nodes_round_trip(tmp_path):
    tree = (mtopt.EmptyState(3), optax.EmptyState(), {})
    assert_bit_identical(round_trip(tmp_path, tree), tree)


def test_nnx_state_round_trip(tmp_path):
    model = Model(nnx.Rngs(0), num_tasks=3)
    _, params = nnx.split(model, nnx.Param)
    restored = round_trip(tmp_path, params, target=nnx.split(Model(nnx.Rngs(1), 3), nnx.Param)[1])
    assert isinstance(restored, nnx.State)
    assert_bit_identical(restored, params)
    # The restored state can be merged back into a model.
    graphdef, _ = nnx.split(Model(nnx.Rngs(5), 3), nnx.Param)
    merged = nnx.merge(graphdef, restored)
    x = jnp.ones((2, 3))
    for a, b in zip(merged(x), model(x)):
        assert np.array_equal(a, b)


class DropoutModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.norm = nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.dropout(self.linear(x)))


def test_full_nnx_state_with_rng_keys_and_batch_stats_round_trip(tmp_path):
    model = DropoutModel(nnx.Rngs(0))
    model(jnp.ones((4, 3)))  # advances the RNG counters and batch statistics
    _, state = nnx.split(model)
    assert any(jnp.issubdtype(x.dtype, jax.dtypes.prng_key) for x in jax.tree.leaves(state))
    fresh = nnx.split(DropoutModel(nnx.Rngs(9)))[1]
    restored = round_trip(tmp_path, state, target=fresh)
    assert_bit_identical(restored, state)
    # The restored model draws the same dropout masks.
    graphdef, _ = nnx.split(DropoutModel(nnx.Rngs(9)))
    a, b = nnx.merge(graphdef, restored), nnx.merge(graphdef, state)
    assert np.array_equal(a(jnp.ones((4, 3))), b(jnp.ones((4, 3))))


@pytest.mark.parametrize(
    "optimizer",
    [optax.adam(1e-3), optax.sgd(0.1, momentum=0.9), optax.sgd(0.1),
     optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))],
    ids=["adam", "sgd_momentum", "sgd", "chain_adamw"],
)
def test_optax_state_round_trip(tmp_path, optimizer):
    _, params = nnx.split(Model(nnx.Rngs(0)), nnx.Param)
    state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts with floats
        _, state = optimizer.update(grads, state, params)  # non-trivial counts and moments
    fresh = optimizer.init(nnx.split(Model(nnx.Rngs(1)), nnx.Param)[1])
    restored = round_trip(tmp_path, state, target=fresh)
    assert_bit_identical(restored, state)
    assert type(restored) is type(state)


def make_method(name, num_tasks):
    """A registered method with the options it cannot do without."""
    if name == "linear":
        return mtopt.method(name, weights=[1.0] * num_tasks)
    if name == "dwa":
        return mtopt.method(name, steps_per_epoch=1)
    if name == "pmtl":
        prefs = jnp.full((2, num_tasks), 1.0 / num_tasks).at[0].set(
            jnp.arange(1.0, num_tasks + 1) / (num_tasks * (num_tasks + 1) / 2))
        return mtopt.method(name, preferences=prefs)
    return mtopt.method(name)


@pytest.mark.parametrize("name", mtopt.method_names())
def test_every_method_state_round_trip(tmp_path, name):
    params = {"w": jnp.arange(4.0), "b": jnp.ones((2, 2), jnp.bfloat16)}
    state = make_method(name, 3).init(3, params)
    restored = round_trip(tmp_path, state, target=make_method(name, 3).init(3, params))
    assert_bit_identical(restored, state)
    assert type(restored) is type(state)


def test_prng_keys_round_trip(tmp_path):
    tree = {
        "typed": jax.random.key(42),
        "typed_batch": jax.random.split(jax.random.key(1), 4),
        "rbg": jax.random.key(3, impl="rbg"),
        "raw": jax.random.PRNGKey(7),
    }
    target = {
        "typed": jax.random.key(0),
        "typed_batch": jax.random.split(jax.random.key(0), 4),
        "rbg": jax.random.key(0, impl="rbg"),
        "raw": jax.random.PRNGKey(0),
    }
    restored = round_trip(tmp_path, tree, target=target)
    assert_bit_identical(restored, tree)
    assert restored["raw"].dtype == jnp.uint32
    # The restored keys draw the same numbers.
    for k in ("typed", "rbg", "raw"):
        assert np.array_equal(jax.random.normal(restored[k], (3,)), jax.random.normal(tree[k], (3,)))


def test_restore_into_shape_dtype_structs(tmp_path):
    tree = {"w": jnp.arange(3.0), "k": jax.random.key(2)}
    target = jax.eval_shape(lambda: tree)
    restored = round_trip(tmp_path, tree, target=target)
    assert_bit_identical(restored, tree)


def test_restore_is_on_target_device_and_usable_under_jit(tmp_path):
    tree = {"w": jnp.arange(3.0)}
    restored = round_trip(tmp_path, tree)
    assert isinstance(restored["w"], jax.Array)
    assert restored["w"].sharding == tree["w"].sharding
    assert float(jax.jit(jnp.sum)(restored["w"])) == 3.0


# ------------------------------------------------------------------ steps and overwrite


def test_latest_step_and_step_selection(tmp_path):
    assert checkpoint.latest_step(tmp_path / "missing") is None
    assert checkpoint.latest_step(tmp_path) is None
    for step in (3, 12, 7):
        path = checkpoint.save(tmp_path, step, {"x": jnp.full((2,), float(step))})
        assert path == (tmp_path / str(step)).absolute() and path.is_dir()
    # Not a step: other files and directories are ignored.
    (tmp_path / "notes").mkdir()
    (tmp_path / "99.txt").write_text("x")
    assert checkpoint.latest_step(tmp_path) == 12
    assert checkpoint.latest_step(str(tmp_path)) == 12
    target = {"x": jnp.zeros(2)}
    assert float(checkpoint.restore(tmp_path, target)["x"][0]) == 12.0
    assert float(checkpoint.restore(tmp_path, target, step=3)["x"][0]) == 3.0
    assert float(checkpoint.restore(str(tmp_path), target, step=7)["x"][0]) == 7.0
    with pytest.raises(FileNotFoundError, match=r"step 5.*saved steps: \[3, 7, 12\]"):
        checkpoint.restore(tmp_path, target, step=5)


def test_restore_from_empty_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        checkpoint.restore(tmp_path, {"x": jnp.zeros(2)})


def test_overwrite_rules(tmp_path):
    checkpoint.save(tmp_path, 1, {"x": jnp.ones(2)})
    with pytest.raises(FileExistsError, match="step 1 already exists.*overwrite=True"):
        checkpoint.save(tmp_path, 1, {"x": jnp.zeros(2)})
    # The refused save left the checkpoint untouched.
    assert float(checkpoint.restore(tmp_path, {"x": jnp.zeros(2)})["x"][0]) == 1.0
    checkpoint.save(tmp_path, 1, {"y": jnp.full((3,), 5, jnp.int32)}, overwrite=True)
    restored = checkpoint.restore(tmp_path, {"y": jnp.zeros(3, jnp.int32)}, step=1)
    assert np.array_equal(restored["y"], np.full((3,), 5, np.int32))
    # overwrite=True on a new step is just a save.
    checkpoint.save(tmp_path, 2, {"x": jnp.ones(2)}, overwrite=True)
    assert checkpoint.latest_step(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


@pytest.mark.parametrize("step", [-1, 1.0, True, "3"])
def test_bad_step_raises(tmp_path, step):
    with pytest.raises((TypeError, ValueError), match="step must be a non-negative int"):
        checkpoint.save(tmp_path, step, {"x": jnp.ones(2)})


def test_numpy_int_step_accepted(tmp_path):
    checkpoint.save(tmp_path, np.int64(4), {"x": jnp.ones(2)})
    assert checkpoint.latest_step(tmp_path) == 4


def test_non_numeric_leaf_raises(tmp_path):
    with pytest.raises(TypeError, match="cannot checkpoint a leaf of type str"):
        checkpoint.save(tmp_path, 0, {"name": "abc"})
    assert checkpoint.latest_step(tmp_path) is None


def test_save_under_jit_raises(tmp_path):
    def inside(x):
        checkpoint.save(tmp_path, 0, {"x": x})
        return x

    with pytest.raises(TypeError, match=r"leaf \['x'\]: it is a traced value"):
        jax.jit(inside)(jnp.ones(2))


def test_overwrite_leaves_only_step_directories(tmp_path):
    for value in (1.0, 2.0, 3.0):
        checkpoint.save(tmp_path, 0, {"x": jnp.full((2,), value)}, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["0"]
    assert float(checkpoint.restore(tmp_path, {"x": jnp.zeros(2)})["x"][0]) == 3.0


def test_failed_overwrite_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    checkpoint.save(tmp_path, 0, {"x": jnp.ones(2)})
    with pytest.raises(TypeError):
        checkpoint.save(tmp_path, 0, {"x": "not an array"}, overwrite=True)

    def broken_save(self, directory, *args, **kwargs):
        pathlib.Path(directory).mkdir()  # a half-written step
        raise OSError("disk full")

    monkeypatch.setattr(ocp.Checkpointer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, 0, {"x": jnp.zeros(2)}, overwrite=True)
    monkeypatch.undo()
    assert checkpoint.latest_step(tmp_path) == 0
    assert float(checkpoint.restore(tmp_path, {"x": jnp.zeros(2)})["x"][0]) == 1.0
    # The next overwrite cleans up after the failed one.
    checkpoint.save(tmp_path, 0, {"x": jnp.full((2,), 4.0)}, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["0"]
    assert float(checkpoint.restore(tmp_path, {"x": jnp.zeros(2)})["x"][0]) == 4.0


def test_float0_leaf_raises(tmp_path):
    grads = jax.grad(lambda x, n: x * n, argnums=(0, 1), allow_int=True)(1.0, 3)
    with pytest.raises(TypeError, match="not numeric"):
        checkpoint.save(tmp_path, 0, {"g": grads[1]})


def test_directory_is_a_file_raises(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        checkpoint.save(f, 0, {"x": jnp.ones(2)})


def test_not_an_mtopt_checkpoint_raises(tmp_path):
    (tmp_path / "0").mkdir()
    with pytest.raises(ValueError, match="not written by mtopt.checkpoint.save"):
        checkpoint.restore(tmp_path, {"x": jnp.ones(2)})


# ------------------------------------------------------------------ mismatch errors


def test_task_count_mismatch_names_leaf_and_shapes(tmp_path):
    checkpoint.save(tmp_path, 0, mtopt.nash_mtl().init(3))
    with pytest.raises(ValueError, match=r"leaf \.alpha.*expected shape \(2,\).*found shape \(3,\)"):
        checkpoint.restore(tmp_path, mtopt.nash_mtl().init(2))


def test_dtype_mismatch_is_not_cast(tmp_path):
    checkpoint.save(tmp_path, 0, {"w": jnp.ones(3, jnp.float32)})
    with pytest.raises(
        ValueError, match=r"leaf \['w'\].*expected shape \(3,\) and dtype bfloat16.*found shape "
        r"\(3,\) and dtype float32"
    ):
        checkpoint.restore(tmp_path, {"w": jnp.ones(3, jnp.bfloat16)})


def test_scalar_shape_mismatch_is_not_broadcast(tmp_path):
    checkpoint.save(tmp_path, 0, {"w": jnp.ones(())})
    with pytest.raises(ValueError, match=r"expected shape \(4,\).*found shape \(\)"):
        checkpoint.restore(tmp_path, {"w": jnp.ones(4)})


def test_python_float_into_float32_array_is_an_error(tmp_path):
    checkpoint.save(tmp_path, 0, {"lr": 0.1})
    with pytest.raises(ValueError, match="dtype float32.*found shape \\(\\) and dtype float64"):
        checkpoint.restore(tmp_path, {"lr": jnp.float32(0.1)})


def test_typed_vs_raw_key_mismatch(tmp_path):
    checkpoint.save(tmp_path, 0, {"key": jax.random.PRNGKey(0)})
    with pytest.raises(ValueError, match=r"expected shape \(\) and dtype key<fry>.*found shape "
                       r"\(2,\) and dtype uint32"):
        checkpoint.restore(tmp_path, {"key": jax.random.key(0)})
    checkpoint.save(tmp_path, 1, {"key": jax.random.key(0)})
    with pytest.raises(ValueError, match="key<rbg>.*key<fry>"):
        checkpoint.restore(tmp_path, {"key": jax.random.key(0, impl="rbg")}, step=1)


def test_structure_mismatch_lists_missing_and_extra_leaves(tmp_path):
    checkpoint.save(tmp_path, 0, {"a": jnp.ones(2), "b": jnp.ones(2)})
    with pytest.raises(
        ValueError,
        match=r"structure.*in the target but not in the checkpoint: \[\"\['c'\]\"\].*"
        r"in the checkpoint but not in the target: \[\"\['b'\]\"\]",
    ):
        checkpoint.restore(tmp_path, {"a": jnp.ones(2), "c": jnp.ones(2)})


def test_namedtuple_vs_dict_is_a_structure_mismatch(tmp_path):
    class Pair(NamedTuple):
        a: jax.Array
        b: jax.Array

    checkpoint.save(tmp_path, 0, {"a": jnp.ones(2), "b": jnp.ones(2)})
    with pytest.raises(ValueError, match="structure"):
        checkpoint.restore(tmp_path, Pair(jnp.ones(2), jnp.ones(2)))


def test_different_optimizer_is_a_structure_mismatch(tmp_path):
    params = {"w": jnp.ones(3)}
    checkpoint.save(tmp_path, 0, optax.sgd(0.1).init(params))
    with pytest.raises(ValueError, match="structure"):
        checkpoint.restore(tmp_path, optax.adam(0.1).init(params))


def test_saved_files_exist(tmp_path):
    path = checkpoint.save(tmp_path / "nested" / "dir", 5, {"x": jnp.ones(2)})
    assert isinstance(path, pathlib.Path)
    assert path.parent == (tmp_path / "nested" / "dir").absolute()


# ------------------------------------------------------------------ training resume


def _train_setup(method_name):
    num_tasks = 3
    method = mtopt.method(method_name)
    graphdef, _ = nnx.split(Model(nnx.Rngs(0), num_tasks), nnx.Param)
    optimizer = optax.adam(1e-2)
    x = jax.random.normal(jax.random.key(10), (16, 3))
    ys = jax.random.normal(jax.random.key(11), (num_tasks, 16))

    def task_losses(params, x, ys):
        preds = nnx.merge(graphdef, params)(x)
        return jnp.stack([jnp.mean((p - y) ** 2) for p, y in zip(preds, ys)])

    grad_fn = mtopt.value_and_grad(task_losses, method)

    @jax.jit
    def train_step(carry):
        params, opt_state, state, key = carry
        key, sub = jax.random.split(key)
        noise = 0.1 * jax.random.normal(sub, x.shape)  # a stochastic batch
        grads, _, state = grad_fn(params, state, x + noise, ys, key=sub)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts with floats
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, opt_state, state, key

    def fresh(seed):
        _, params = nnx.split(Model(nnx.Rngs(seed), num_tasks), nnx.Param)
        return params, optimizer.init(params), method.init(num_tasks, params), jax.random.key(seed)

    def train(carry, steps):
        for _ in range(steps):
            carry = train_step(carry)
        return carry

    return fresh, train


@pytest.mark.parametrize("method_name", ["uncertainty", "nash_mtl", "pcgrad", "gradvac"])
def test_training_resume_is_bit_identical(tmp_path, method_name):
    k = 4
    fresh, train = _train_setup(method_name)
    straight = train(fresh(0), 2 * k)
    half = train(fresh(0), k)
    checkpoint.save(tmp_path, k, half)
    del half
    template = fresh(123)  # different values, same structure
    resumed = checkpoint.restore(tmp_path, template)
    assert_bit_identical(resumed, train(fresh(0), k))
    resumed = train(resumed, k)
    assert_bit_identical(resumed, straight)
    # The stateful part really moved (so the test would notice a lost state).
    initial_state = fresh(0)[2]
    if jax.tree.leaves(initial_state):
        assert not all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(straight[2]), jax.tree.leaves(initial_state))
        )
