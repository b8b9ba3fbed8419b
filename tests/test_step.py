"""The training step: per-task gradients, weights, combined gradient, info, on a flax model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtopt
from mtopt._src import base as mtopt_base


class TwoHeadNet(nnx.Module):
    """Shared trunk, one linear head per task."""

    def __init__(self, rngs: nnx.Rngs, num_tasks: int = 2):
        self.trunk = nnx.Linear(4, 16, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(16, 1, rngs=rngs) for _ in range(num_tasks)])

    def __call__(self, x):
        z = jax.nn.tanh(self.trunk(x))
        return [head(z)[:, 0] for head in self.heads]


def make_problem(num_tasks: int = 2, seed: int = 0):
    model = TwoHeadNet(nnx.Rngs(seed), num_tasks)
    graphdef, params = nnx.split(model, nnx.Param)
    kx, ky = jax.random.split(jax.random.key(seed + 1))
    x = jax.random.normal(kx, (32, 4))
    y = jax.random.normal(ky, (32, num_tasks)) * jnp.arange(1, num_tasks + 1, dtype=jnp.float32)[None, :]

    def task_losses(params, x, y):
        outs = nnx.merge(graphdef, params)(x)
        losses = jnp.stack([jnp.mean((o - y[:, i]) ** 2) for i, o in enumerate(outs)])
        penalty = 1e-3 * sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
        return mtopt.Objectives(losses, penalty=penalty)

    return graphdef, params, x, y, task_losses


def all_methods():
    return {
        "linear": mtopt.linear([1.0, 0.2]),
        "equal": mtopt.equal(),
        "log": mtopt.log_scalarization(),
        "dwa_epoch": mtopt.dwa(steps_per_epoch=2),
        "dwa_window": mtopt.dwa(mode="window", window=2),
        "uncertainty": mtopt.uncertainty(),
        "mgda": mtopt.mgda(),
        "mgda_l2": mtopt.mgda("l2"),
        "mgda_loss+": mtopt.mgda("loss+"),
    }


def tree_allclose(a, b, rtol=1e-5, atol=1e-6):
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


class StepTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_every_method_grad_is_weighted_sum_of_task_grads(self):
        _, params, x, y, task_losses = make_problem()
        penalty_grad = jax.grad(
            lambda p: 1e-3 * sum(jnp.sum(q**2) for q in jax.tree.leaves(p))
        )(params)
        for name, method in all_methods().items():
            step = self.variant(mtopt.value_and_grad(task_losses, method, return_task_grads=True))
            state = method.init(2)
            for _ in range(3):  # stateful methods across steps
                grads, info, state = step(params, state, x, y)
            weighted = mtopt.combine(info.task_grads, info.weights)
            expected = jax.tree.map(lambda a, b: a + b, weighted, penalty_grad)
            tree_allclose(grads, expected)
            # grad of the scalar sum_i sg(w_i) L_i + R is the same thing.
            direct = jax.grad(
                lambda p: jnp.sum(info.weights * task_losses(p, x, y).losses)
                + task_losses(p, x, y).penalty
            )(params)
            tree_allclose(grads, direct)
            chex.assert_tree_all_finite((grads, info.weights))
            self.assertEqual(info.weights.shape, (2,), name)

    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_only_path_equals_jacobian_path(self):
        _, params, x, y, task_losses = make_problem()
        for method in (mtopt.linear([1.0, 0.2]), mtopt.dwa(mode="window", window=1),
                       mtopt.uncertainty(), mtopt.log_scalarization()):
            cheap = self.variant(mtopt.value_and_grad(task_losses, method))
            full = self.variant(mtopt.value_and_grad(task_losses, method, diagnostics=True))
            s1 = s2 = method.init(2)
            for _ in range(3):
                g1, i1, s1 = cheap(params, s1, x, y)
                g2, i2, s2 = full(params, s2, x, y)
                tree_allclose(g1, g2)
                tree_allclose(i1.weights, i2.weights)
            self.assertIsNone(i1.gramian)
            self.assertEqual(i2.gramian.shape, (2, 2))

    def test_total_is_exactly_weighted_sum_plus_penalty(self):
        _, params, x, y, task_losses = make_problem()
        step = jax.jit(mtopt.value_and_grad(task_losses, mtopt.linear([1.0, 0.2])))
        _, info, _ = step(params, mtopt.linear([1.0, 0.2]).init(2), x, y)
        objs = task_losses(params, x, y)
        l1, l2 = np.float32(objs.losses[0]), np.float32(objs.losses[1])
        penalty = np.float32(objs.penalty)
        expected = np.float32(1.0) * l1 + np.float32(0.2) * l2 + penalty
        np.testing.assert_allclose(float(info.total), float(expected), rtol=2e-7)
        np.testing.assert_allclose(float(info.penalty), float(penalty), rtol=1e-6)
        np.testing.assert_allclose(
            float(info.total - info.penalty), float(jnp.sum(info.weights * info.losses)), rtol=1e-7
        )

    def test_strategies_agree(self):
        _, params, x, y, task_losses = make_problem(num_tasks=5)
        jacs = [
            jax.jit(mtopt.task_jacobian(task_losses, strategy=s, chunk_size=c))(params, x, y)[1]
            for s, c in (("batched", None), ("sequential", None), ("sequential", 2), ("batched", 3))
        ]
        for jac in jacs[1:]:
            tree_allclose(jac, jacs[0])
        # Rows are the per-task gradients.
        for t in range(5):
            row = jax.grad(lambda p: task_losses(p, x, y).losses[t])(params)
            tree_allclose(jax.tree.map(lambda j: j[t], jacs[0]), row)
        chex.assert_tree_shape_prefix(jacs[0], (5,))

    def test_vmap_over_independent_problems(self):
        problems = [make_problem(seed=s) for s in range(4)]
        graphdef = problems[0][0]
        task_losses = problems[0][4]
        stack = lambda *xs: jnp.stack(xs)
        params = jax.tree.map(stack, *[p[1] for p in problems])
        xs = jnp.stack([p[2] for p in problems])
        ys = jnp.stack([p[3] for p in problems])
        del graphdef
        for method in all_methods().values():
            step = mtopt.value_and_grad(task_losses, method)
            states = jax.vmap(lambda _: method.init(2))(jnp.arange(4))
            grads, info, _ = jax.jit(jax.vmap(step))(params, states, xs, ys)
            for b in range(4):
                p_b = jax.tree.map(lambda a: a[b], params)
                s_b = jax.tree.map(lambda a: a[b], states)
                g_b, i_b, _ = jax.jit(step)(p_b, s_b, xs[b], ys[b])
                tree_allclose(jax.tree.map(lambda a: a[b], grads), g_b, rtol=1e-4, atol=1e-5)
                tree_allclose(info.weights[b], i_b.weights, rtol=1e-4, atol=1e-5)

    def test_training_step_does_not_retrace(self):
        _, params, x, y, task_losses = make_problem()
        for method in (mtopt.dwa(steps_per_epoch=3), mtopt.uncertainty(), mtopt.mgda()):
            tx = optax.adam(1e-2)
            grad_fn = mtopt.value_and_grad(task_losses, method)

            @jax.jit
            @chex.assert_max_traces(n=1)
            def train_step(params, opt_state, state, x, y):
                grads, info, state = grad_fn(params, state, x, y)
                params, opt_state = mtopt_base.optax_step(tx, grads, opt_state, params)
                return params, opt_state, state, info

            p, o, s = params, tx.init(params), method.init(2)
            first = None
            for _ in range(10):
                p, o, s, info = train_step(p, o, s, x, y)
                first = info.total if first is None else first
            self.assertLess(float(info.total), float(first))
            chex.clear_trace_counter()


def test_dict_losses_keep_names_in_sorted_order():
    def fn(p):
        return {"seg": jnp.sum(p**2), "depth": jnp.sum((p - 1.0) ** 2), "normal": jnp.sum(p)}

    step = mtopt.value_and_grad(fn, mtopt.mgda())
    _, info, _ = step(jnp.array([0.5, 2.0]), mtopt.mgda().init(3))
    assert info.names == ("depth", "normal", "seg")
    np.testing.assert_allclose(info.losses, [1.25, 2.5, 4.25])
    scalars = info.scalars()
    assert set(scalars) >= {"loss/seg", "weight/depth", "cosine/depth/seg", "grad_norm/normal"}
    np.testing.assert_allclose(float(scalars["loss/depth"]), 1.25)


def test_sequence_losses_and_aux():
    def fn(p):
        return [jnp.sum(p**2), jnp.sum(p)], {"pred": p * 2}

    grads, info, _ = mtopt.value_and_grad(fn, mtopt.equal(), has_aux=True)(
        jnp.ones(3), mtopt.equal().init(2))
    np.testing.assert_allclose(info.aux["pred"], 2 * np.ones(3))
    np.testing.assert_allclose(grads, 2 * np.ones(3) + 1)


@pytest.mark.parametrize("method", list(all_methods()))
def test_single_task(method):
    if method == "linear":
        m = mtopt.linear([0.5])
    else:
        m = all_methods()[method]
    fn = lambda p: jnp.stack([jnp.sum((p - 1.0) ** 2)])
    grads, info, _ = jax.jit(mtopt.value_and_grad(fn, m))(jnp.zeros(3), m.init(1))
    assert info.weights.shape == (1,)
    assert np.all(np.isfinite(np.asarray(grads)))
    np.testing.assert_allclose(grads, info.weights[0] * -2.0 * np.ones(3), rtol=1e-6)


def test_shared_mask_excludes_heads_from_gramian():
    _, params, x, y, task_losses = make_problem()
    is_trunk = lambda path, leaf: "trunk" in jax.tree_util.keystr(path)
    step = jax.jit(mtopt.value_and_grad(task_losses, mtopt.mgda(), shared=is_trunk,
                                        return_task_grads=True))
    grads, info, _ = step(params, mtopt.mgda().init(2), x, y)
    trunk_jac = jax.tree.map(
        lambda j: j, {"trunk": info.task_grads["trunk"]}
    )
    np.testing.assert_allclose(info.gramian, mtopt.gramian(trunk_jac), rtol=1e-5)
    # Heads: head k receives w_k * grad L_k (+ penalty gradient).
    head0 = jax.grad(lambda p: task_losses(p, x, y).losses[0])(params)["heads"][0]["kernel"]
    pen0 = 2e-3 * params["heads"][0]["kernel"]
    np.testing.assert_allclose(
        grads["heads"][0]["kernel"], info.weights[0] * head0 + pen0, rtol=1e-5, atol=1e-7
    )


def test_bad_inputs_name_the_expected_shapes():
    fn_matrix = lambda p: jnp.ones((2, 3)) * jnp.sum(p)
    with pytest.raises(ValueError, match=r"\(T,\) vector .* shape \(2, 3\)"):
        mtopt.value_and_grad(fn_matrix, mtopt.equal())(jnp.ones(2), mtopt.equal().init(2))
    fn_nonscalar = lambda p: {"a": jnp.sum(p), "b": p}
    with pytest.raises(ValueError, match=r"'b' must be a scalar .* shape \(2,\)"):
        mtopt.value_and_grad(fn_nonscalar, mtopt.equal())(jnp.ones(2), mtopt.equal().init(2))
    fn3 = lambda p: jnp.stack([jnp.sum(p), jnp.sum(p**2), jnp.sum(p**3)])
    with pytest.raises(ValueError, match="initialised for 2 tasks but the step received 3"):
        mtopt.value_and_grad(fn3, mtopt.dwa(steps_per_epoch=2))(
            jnp.ones(2), mtopt.dwa(steps_per_epoch=2).init(2))
    with pytest.raises(ValueError, match="initialised for 2 tasks but the step received 3"):
        mtopt.value_and_grad(fn3, mtopt.uncertainty())(jnp.ones(2), mtopt.uncertainty().init(2))
    with pytest.raises(ValueError, match="linear was built with 2 weights .* used with 3 tasks"):
        mtopt.value_and_grad(fn3, mtopt.linear([1.0, 2.0]))(
            jnp.ones(2), mtopt.equal().init(3))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mtopt.linear([[1.0, 2.0]])
    with pytest.raises(ValueError, match="non-negative"):
        mtopt.linear([1.0, -2.0])
    with pytest.raises(ValueError, match="finite"):
        mtopt.linear([1.0, float("nan")])
    with pytest.raises(TypeError, match="floating dtype"):
        mtopt.value_and_grad(lambda p: jnp.array([1, 2]), mtopt.equal())(
            jnp.ones(2), mtopt.equal().init(2))
    with pytest.raises(ValueError, match="strategy must be one of"):
        mtopt.value_and_grad(fn3, mtopt.mgda(), strategy="parallel")
    with pytest.raises(TypeError, match="mtopt.Weighting"):
        mtopt.value_and_grad(fn3, "mgda")
    with pytest.raises(ValueError, match="pair"):
        mtopt.value_and_grad(fn3, mtopt.equal(), has_aux=True)(jnp.ones(2), mtopt.equal().init(3))
    with pytest.raises(ValueError, match="num_tasks must be a positive int"):
        mtopt.dwa(steps_per_epoch=2).init(0)


def test_bfloat16_params_give_float32_gramian_and_weights():
    params = jnp.array([0.3, -1.2, 2.0], jnp.bfloat16)
    fn = lambda p: jnp.stack([jnp.sum(p**2), jnp.sum((p - 1) ** 2)]).astype(jnp.float32)
    grads, info, _ = mtopt.value_and_grad(fn, mtopt.mgda())(params, mtopt.mgda().init(2))
    assert info.gramian.dtype == jnp.float32
    assert info.weights.dtype == jnp.float32
    assert grads.dtype == jnp.bfloat16
    ref_p = params.astype(jnp.float32)
    ref = mtopt.value_and_grad(fn, mtopt.mgda())(ref_p, mtopt.mgda().init(2))[1].weights
    np.testing.assert_allclose(info.weights, ref, atol=2e-2)
