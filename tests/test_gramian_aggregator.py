"""Gramian diagnostics, the optax aggregator (with flax.nnx), and representation mode."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from optax.experimental import aggregating

import mtopt
from gramian_cases import gramian, jacobian_cases


def split_jacobian(j: np.ndarray) -> dict:
    """A (T, P) matrix as a two-leaf pytree with non-flat leaves."""
    t, p = j.shape
    cut = p // 2
    return {"a": jnp.asarray(j[:, :cut].reshape(t, cut, 1)), "b": jnp.asarray(j[:, cut:])}


def test_gramian_matches_numpy_on_cases():
    for name, j in jacobian_cases(seed=5, num_random=20):
        if j.shape[1] < 2 or np.abs(j).max() > 1e15:
            continue
        jac = jax.tree.map(lambda x: x.astype(jnp.float32), split_jacobian(j))
        g = np.asarray(mtopt.gramian(jac), np.float64)
        scale = max(np.abs(gramian(j)).max(), 1e-30)
        np.testing.assert_allclose(g, gramian(j), atol=1e-5 * scale, err_msg=name)
        np.testing.assert_allclose(g, g.T, err_msg=name)


def test_gramian_accumulates_bfloat16_in_float32():
    rng = np.random.default_rng(0)
    j = rng.normal(size=(3, 4000)).astype(np.float32)
    jac_bf16 = {"w": jnp.asarray(j, jnp.bfloat16)}
    g = mtopt.gramian(jac_bf16)
    assert g.dtype == jnp.float32
    exact = gramian(np.asarray(jac_bf16["w"].astype(jnp.float32), np.float64))
    np.testing.assert_allclose(np.asarray(g), exact, rtol=1e-4, atol=1e-2)
    combined = mtopt.combine(jac_bf16, jnp.array([1.0, 0.5, 0.25]))
    assert combined["w"].dtype == jnp.bfloat16


def test_diagnostics():
    g = jnp.array([[4.0, -2.0, 0.0], [-2.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(mtopt.task_norms(g), [2.0, 2.0, 0.0])
    cos = mtopt.cosine_matrix(g)
    np.testing.assert_allclose(cos, [[1.0, -0.5, 0.0], [-0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert int(mtopt.num_conflicts(g)) == 1
    assert np.all(np.isfinite(np.asarray(mtopt.cosine_matrix(jnp.zeros((4, 4))))))


def test_jacobian_leaf_errors():
    with pytest.raises(ValueError, match="same leading task axis"):
        mtopt.gramian({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))})
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        mtopt.combine({"a": jnp.ones((2, 3))}, jnp.ones(3))


def quadratic_tasks(params):
    return jnp.stack([jnp.sum((params - 1.0) ** 2), jnp.sum((params + 1.0) ** 2), jnp.sum(params)])


class AggregatorTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_process_chain_with_adam_matches_value_and_grad(self):
        for method in (mtopt.mgda(), mtopt.dwa(mode="window", window=1), mtopt.uncertainty()):
            tx = aggregating.process(
                optax.with_extra_args_support(optax.identity()),
                mtopt.as_aggregator(method, num_tasks=3),
                optax.sgd(0.05),
            )
            ref_step = mtopt.value_and_grad(quadratic_tasks, method)

            def train(params, opt_state):
                losses, jac, _ = mtopt.task_jacobian(quadratic_tasks)(params)
                updates, opt_state = tx.update(jac, opt_state, params, losses=losses)
                return optax.apply_updates(params, updates), opt_state

            train = self.variant(train)
            params = jnp.array([3.0, -2.0, 0.5])
            ref_params, ref_state = params, method.init(3)
            opt_state = tx.init(params)
            for _ in range(4):
                params, opt_state = train(params, opt_state)
                grads, info, ref_state = ref_step(ref_params, ref_state)
                ref_params = ref_params - 0.05 * grads
            np.testing.assert_allclose(params, ref_params, rtol=1e-5, atol=1e-6)
            agg_state = opt_state[1]
            np.testing.assert_allclose(agg_state.weights, info.weights, rtol=1e-5)

    def test_flax_nnx_optimizer(self):
        class Net(nnx.Module):
            def __init__(self, rngs):
                self.trunk = nnx.Linear(3, 8, rngs=rngs)
                self.head_a = nnx.Linear(8, 1, rngs=rngs)
                self.head_b = nnx.Linear(8, 1, rngs=rngs)

        model = Net(nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(1), (64, 3))
        ya, yb = jnp.sin(x[:, :1]), jnp.cos(x[:, 1:2])

        def task_losses(model):
            z = jax.nn.relu(model.trunk(x))
            return jnp.stack([jnp.mean((model.head_a(z) - ya) ** 2),
                              jnp.mean((model.head_b(z) - yb) ** 2)])

        tx = aggregating.process(
            optax.with_extra_args_support(optax.identity()),
            mtopt.as_aggregator(mtopt.mgda(), num_tasks=2),
            optax.sgd(0.05),
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def train_step(model, optimizer):
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            fn = lambda p: task_losses(nnx.merge(graphdef, p, rest))
            losses, jac, _ = mtopt.task_jacobian(fn)(params)
            optimizer.update(model, jac, losses=losses)
            return losses

        first = train_step(model, optimizer)
        for _ in range(100):
            last = train_step(model, optimizer)
        assert np.all(np.asarray(last) < np.asarray(first))

    def test_aggregator_rejects_wrong_task_count(self):
        agg = mtopt.as_aggregator(mtopt.mgda(), num_tasks=2)
        with pytest.raises(ValueError, match="initialised for 2 tasks but the step received 3"):
            agg.update({"w": jnp.ones((3, 4))}, agg.init({"w": jnp.ones(4)}), losses=jnp.ones(3))


def make_rep_problem(num_tasks=3, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "trunk": jnp.asarray(rng.normal(size=(5, 6)) / 3, jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(num_tasks, 6)), jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, num_tasks)), jnp.float32)

    def encode(p, x, y):
        return jnp.tanh(x @ p["trunk"])

    def heads(p, z, x, y):
        preds = z @ p["heads"].T
        return jnp.mean((preds - y) ** 2, axis=0)

    return params, x, y, encode, heads


class RepresentationTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_grad_is_grad_of_weighted_loss_and_weights_are_mgda_on_z(self):
        params, x, y, encode, heads = make_rep_problem()
        method = mtopt.mgda()
        step = self.variant(
            mtopt.representation_value_and_grad(encode, heads, method, return_task_grads=True)
        )
        grads, info, _ = step(params, method.init(3), x, y)
        full = lambda p: heads(p, encode(p, x, y), x, y)
        ref = jax.grad(lambda p: jnp.sum(info.weights * full(p)))(params)
        chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-6)
        # Weights are MGDA's on the representation Jacobian.
        z = encode(params, x, y)
        jac_z = jax.jacrev(lambda z: heads(params, z, x, y))(z)
        np.testing.assert_allclose(info.task_grads, jac_z, rtol=1e-5, atol=1e-7)
        g_z = mtopt.gramian(jac_z)
        np.testing.assert_allclose(info.gramian, g_z, rtol=1e-5)
        w_ref, _ = method.update(method.init(3), info.losses, gramian=g_z)
        np.testing.assert_allclose(info.weights, w_ref, atol=1e-5)

    def test_loss_only_method_and_vmap(self):
        params, x, y, encode, heads = make_rep_problem()
        step = mtopt.representation_value_and_grad(encode, heads, mtopt.linear([1.0, 2.0, 3.0]))
        grads, info, _ = jax.jit(step)(params, mtopt.equal().init(3), x, y)
        ref = jax.grad(lambda p: jnp.sum(jnp.array([1.0, 2.0, 3.0]) * heads(p, encode(p, x, y), x, y)))(params)
        chex.assert_trees_all_close(grads, ref, rtol=1e-5, atol=1e-6)
        assert info.gramian is None
        mstep = mtopt.representation_value_and_grad(encode, heads, mtopt.mgda())
        batch = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
        state = mtopt.mgda().init(3)
        g, i, _ = jax.jit(jax.vmap(mstep, in_axes=(0, None, None, None)))(batch, state, x, y)
        g1, i1, _ = jax.jit(mstep)(jax.tree.map(lambda a: a[1], batch), state, x, y)
        np.testing.assert_allclose(i.weights[1], i1.weights, atol=1e-5)

    def test_rejects_jacobian_methods(self):
        per_coordinate = mtopt.Weighting(
            init=mtopt.mgda().init, update=mtopt.mgda().update, needs=mtopt.Needs.JACOBIAN,
            name="fake",
        )
        with pytest.raises(ValueError, match="representation mode only supports"):
            mtopt.representation_value_and_grad(lambda p: p, lambda p, z: z, per_coordinate)


def test_gramian_blocked_path_on_large_leaves():
    # Leaves above the CPU block size go through the blocked fori_loop path,
    # including a remainder block; the result matches float64 NumPy.
    rng = np.random.default_rng(7)
    big = rng.normal(size=(6, 300_007)).astype(np.float32)
    jac = {"big": jnp.asarray(big.reshape(6, 300_007, 1)), "small": jnp.ones((6, 3))}
    g = np.asarray(jax.jit(mtopt.gramian)(jac), np.float64)
    ref = big.astype(np.float64) @ big.astype(np.float64).T + 3.0
    np.testing.assert_allclose(g, ref, rtol=2e-5, atol=1e-2)


def test_representation_mode_with_a_preference_method():
    params, x, y, encode, heads = make_rep_problem(num_tasks=2)
    method = mtopt.epo()
    step = jax.jit(mtopt.representation_value_and_grad(encode, heads, method))
    prefs = jnp.array([[0.2, 0.8], [0.5, 0.5], [0.8, 0.2]])
    grads, info, _ = jax.vmap(lambda r: step(params, method.init(2), x, y, preference=r))(prefs)
    assert info.weights.shape == (3, 2)
    assert np.all(np.isfinite(np.asarray(info.weights)))
    for k in range(3):
        w = info.weights[k]
        ref = jax.grad(lambda p: jnp.sum(w * heads(p, encode(p, x, y), x, y)))(params)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[k], grads), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "rlw"])
def test_representation_draws_the_same_numbers_as_value_and_grad(name):
    """Same key -> same random numbers in both modes: with an identity encoder the two
    Gramians coincide, so the weights must too (PCGrad/GradVac visit tasks in a random
    order, RLW draws its weights)."""
    rng = np.random.default_rng(4)
    params = {"z": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}
    targets = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)

    def fn(p):
        return jnp.stack([jnp.sum((p["z"] - t) ** 2) * (i + 1) for i, t in enumerate(targets)])

    method = mtopt.method(name)
    state = method.init(4, params)
    key = jax.random.key(7)
    _, info_p, _ = mtopt.value_and_grad(fn, method)(params, state, key=key)
    rep = mtopt.representation_value_and_grad(
        lambda p: p["z"], lambda p, z: fn({"z": z}), method)
    _, info_r, _ = rep(params, state, key=key)
    np.testing.assert_allclose(info_r.weights, info_p.weights, rtol=1e-5, atol=1e-6)


def test_representation_traces_the_heads_once_and_checks_the_weights():
    params, x, y, encode, heads = make_rep_problem()
    calls = []

    def counting_heads(p, z, x, y):
        calls.append(1)
        return heads(p, z, x, y)

    method = mtopt.mgda()
    step = mtopt.representation_value_and_grad(encode, counting_heads, method)
    jax.jit(step)(params, method.init(3), x, y)
    assert len(calls) == 1
    bad = mtopt.Weighting(init=mtopt.equal().init,
                          update=lambda state, losses, **_: (jnp.ones(2), state),
                          needs=mtopt.Needs.LOSSES, name="bad")
    step = mtopt.representation_value_and_grad(encode, heads, bad)
    with pytest.raises(ValueError, match=r"bad returned weights of shape \(2,\), expected \(3,\)"):
        step(params, bad.init(3), x, y)


def test_representation_batch_summed_gramian_is_libmtl_rep_grad():
    """LibMTL's rep_grad sums each task's representation gradient over the batch before
    the Gramian; the default is the full inner product (Sener & Koltun's code). They
    differ at batch 4 and agree at batch 1."""
    params, x, y, encode, heads = make_rep_problem(seed=1)
    method = mtopt.mgda()
    for batch in (4, 1):
        xb, yb = x[:batch], y[:batch]
        z = encode(params, xb, yb)
        jac_z = jax.jacrev(lambda z: heads(params, z, xb, yb))(z)  # (T, B, D)
        summed = jnp.sum(jac_z, axis=1)
        out = {}
        for form in ("full", "batch_summed"):
            step = mtopt.representation_value_and_grad(encode, heads, method, gramian=form)
            _, info, _ = step(params, method.init(3), xb, yb)
            out[form] = info
        np.testing.assert_allclose(out["batch_summed"].gramian, summed @ summed.T, rtol=1e-5)
        np.testing.assert_allclose(out["full"].gramian, mtopt.gramian(jac_z), rtol=1e-5)
        differ = np.abs(np.asarray(out["full"].weights - out["batch_summed"].weights)).max()
        if batch == 1:
            assert differ < 1e-6
        else:
            assert differ > 1e-2
    with pytest.raises(ValueError, match="gramian must be one of 'full', 'batch_summed'"):
        mtopt.representation_value_and_grad(encode, heads, method, gramian="mean")
