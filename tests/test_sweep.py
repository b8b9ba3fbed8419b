"""Tests of mtopt.pareto.sweep: K runs in one program equal K separate runs; fronts."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from flax import nnx

import mtopt
from mtopt import pareto, problems
from mtopt._src import base


_STEPS = {}


def separate_run(loss_fn, method, x0, pref, run_key, optimizer, num_steps, bounds=None, args=()):
    """The reference: one run, one jitted step at a time, keys as sweep documents them."""
    if (loss_fn, method) not in _STEPS:
        _STEPS[(loss_fn, method)] = jax.jit(mtopt.value_and_grad(loss_fn, method))
    step = _STEPS[(loss_fn, method)]
    num_tasks = jnp.asarray(loss_fn(x0, *args)).shape[0]
    state = method.init(num_tasks, x0)
    opt_state = optimizer.init(x0)
    params = x0
    history, weights = [], []
    for t in range(num_steps):
        key = None if run_key is None else jax.random.fold_in(run_key, t)
        grads, info, state = step(params, state, *args, key=key, preference=pref)
        history.append(info.losses)
        weights.append(info.weights)
        params, opt_state = base.optax_step(optimizer, grads, opt_state, params)
        if bounds is not None:
            params = jnp.clip(params, bounds[0], bounds[1])
    return params, jnp.asarray(loss_fn(params, *args)), jnp.stack(history), jnp.stack(weights)


def true_f1_decreasing(losses):
    f1 = np.asarray(losses[:, 0])
    return bool(np.all(np.diff(f1) < 0))


class SweepEqualsSeparateRunsTest(chex.TestCase):
    # The reference runs are shared by the jit and no-jit variants.
    PROBLEM = problems.vlmop2(n_var=3)
    PREFS = pareto.uniform_preferences(3, margin=0.1)
    X0 = jnp.array([0.2, -0.4, 0.6])
    KEY = jax.random.key(3)
    NUM_STEPS, EVERY = 23, 5

    @classmethod
    @functools.lru_cache(maxsize=None)
    def reference(cls, name):
        run_keys = jax.random.split(cls.KEY, 3)
        method = mtopt.method(name)
        # Only preference methods get a preference (issue 11, item 16: RLW takes none).
        reads = method.preference != "none"
        return [
            separate_run(cls.PROBLEM, method, cls.X0, cls.PREFS[k] if reads else None,
                         run_keys[k], optax.adam(0.05), cls.NUM_STEPS,
                         bounds=cls.PROBLEM.bounds)
            for k in range(3)
        ]

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("epo", "epo"), ("rlw", "rlw"))
    def test_equals_separate_runs(self, name):
        problem, every = self.PROBLEM, self.EVERY
        method = mtopt.method(name)
        reads = method.preference != "none"

        def run(prefs, x0, key):
            # A method that reads no preference: K = 3 runs from batched start points.
            return pareto.sweep(
                problem, method, x0 if reads else jnp.stack([x0] * 3),
                optimizer=optax.adam(0.05), num_steps=self.NUM_STEPS,
                preferences=prefs if reads else None, batched_params=not reads, key=key,
                record_every=every, bounds=problem.bounds,
            )

        result = self.variant(run)(self.PREFS, self.X0, self.KEY)
        chex.assert_shape(result.params, (3, 3))
        chex.assert_shape(result.losses, (3, 2))
        chex.assert_shape(result.history, (3, 5, 2))  # records at steps 0, 5, 10, 15, 20
        chex.assert_shape(result.weights, (3, 5, 2))
        for k, (params, losses, history, weights) in enumerate(self.reference(name)):
            chex.assert_trees_all_close(result.params[k], params, rtol=1e-4, atol=1e-5)
            chex.assert_trees_all_close(result.losses[k], losses, rtol=1e-4, atol=1e-5)
            chex.assert_trees_all_close(result.history[k], history[::every], rtol=1e-4, atol=1e-5)
            chex.assert_trees_all_close(result.weights[k], weights[::every], rtol=1e-4, atol=1e-5)
        # The runs differ (different preferences / keys) and moved from the start.
        assert float(jnp.abs(result.params[0] - result.params[2]).max()) > 1e-2
        np.testing.assert_allclose(result.history[:, 0],
                                   jnp.broadcast_to(problem.f(self.X0), (3, 2)))

    def test_batched_start_points_toy(self):
        """K start points of the CAGrad toy problem, MGDA, no preferences."""
        toy = problems.toy()
        starts = toy.start_points
        optimizer = optax.adam(1e-3)
        result = pareto.sweep(
            toy, mtopt.mgda(), starts, optimizer=optimizer, num_steps=40, batched_params=True,
        )
        chex.assert_shape(result.params, starts.shape)
        assert result.history is None and result.weights is None
        for k in range(starts.shape[0]):
            params, losses, _, _ = separate_run(toy, mtopt.mgda(), starts[k], None, None,
                                                optimizer, 40)
            chex.assert_trees_all_close(result.params[k], params, rtol=1e-4, atol=1e-5)
            chex.assert_trees_all_close(result.losses[k], losses, rtol=1e-4, atol=1e-5)

    def test_batched_params_with_preferences(self):
        problem = problems.vlmop2(n_var=2)
        prefs = pareto.uniform_preferences(2, margin=0.2)
        starts = jnp.array([[0.5, 0.5], [-0.5, -0.1]])
        optimizer = optax.sgd(0.1)
        result = pareto.sweep(problem, mtopt.tchebycheff(), starts, optimizer=optimizer,
                              num_steps=15, preferences=prefs, batched_params=True)
        for k in range(2):
            params, _, _, _ = separate_run(problem, mtopt.tchebycheff(), starts[k], prefs[k],
                                           None, optimizer, 15)
            chex.assert_trees_all_close(result.params[k], params, rtol=1e-5, atol=1e-6)

    def test_vmap_over_start_points(self):
        """jax.vmap of a whole sweep equals the sweeps one by one."""
        problem = problems.vlmop2(n_var=2)
        prefs = pareto.uniform_preferences(3, margin=0.1)

        def run(x0):
            return pareto.sweep(problem, mtopt.smooth_tchebycheff(), x0,
                                optimizer=optax.sgd(0.2), num_steps=20, preferences=prefs).losses

        starts = jnp.array([[0.3, 0.1], [-0.2, 0.4]])
        batched = jax.vmap(run)(starts)
        chex.assert_shape(batched, (2, 3, 2))
        for i in range(2):
            chex.assert_trees_all_close(batched[i], run(starts[i]), rtol=1e-5, atol=1e-6)

    def test_linear_weights_are_the_preferences_and_dict_losses(self):
        """preference_linear's recorded weights are r; dict losses and args are accepted."""

        def losses(params, target):
            return {"a": jnp.sum((params - target) ** 2), "b": jnp.sum((params + target) ** 2)}

        prefs = pareto.das_dennis(4, 2)
        target = jnp.array([1.0, -2.0])
        result = pareto.sweep(losses, mtopt.preference_linear(), jnp.zeros(2),
                              optimizer=optax.sgd(0.1), num_steps=60, preferences=prefs,
                              args=(target,), record_every=60)
        chex.assert_shape(result.weights, (5, 1, 2))
        np.testing.assert_allclose(result.weights[:, 0], prefs, rtol=1e-6)
        # Closed form: argmin r_a |x - c|^2 + r_b |x + c|^2 = (r_a - r_b) c.
        expected = (prefs[:, :1] - prefs[:, 1:]) * target[None, :]
        np.testing.assert_allclose(result.params, expected, atol=1e-4)


class FrontTest(chex.TestCase):
    def test_zdt1_front_with_epo_and_tchebycheff(self):
        zdt1 = problems.zdt1(n_var=10)
        prefs = pareto.uniform_preferences(12, margin=0.05)
        front = zdt1.pareto_front(500)
        hv_front = float(pareto.hypervolume(front, zdt1.ref_point))
        for method in (mtopt.epo(), mtopt.tchebycheff()):
            # A decaying step size lets the runs settle instead of oscillating around the
            # solution at the scale of the learning rate.
            optimizer = optax.adam(optax.cosine_decay_schedule(2e-2, 600))
            result = pareto.sweep(zdt1, method, jnp.full(10, 0.5), optimizer=optimizer,
                                  num_steps=600, preferences=prefs, bounds=zdt1.bounds)
            f = result.losses
            assert bool(jnp.all(jnp.isfinite(f))), method.name
            assert bool(pareto.non_dominated_mask(f).all()), method.name
            # On the true front: f2 = 1 - sqrt(f1), i.e. x_2..x_n = 0 (g = 1).
            np.testing.assert_allclose(f[:, 1], 1.0 - jnp.sqrt(f[:, 0]), atol=5e-3)
            assert float(pareto.gd(f, front)) < 5e-3, method.name
            # Spread along the front, in the order of the preferences (more weight on f1,
            # smaller f1), and the hypervolume close to the true front's.
            assert true_f1_decreasing(f), (method.name, f[:, 0])
            assert float(f[0, 0]) > 0.85 and float(f[-1, 0]) < 0.06, (method.name, f[:, 0])
            hv = float(pareto.hypervolume(f, zdt1.ref_point))
            assert hv > 0.93 * hv_front, (method.name, hv, hv_front)
            # Both methods balance r_i f_i: Tchebycheff's minimiser is at the kink; EPO
            # stops balancing once the non-uniformity of r * f is below eps = 1e-4 (a
            # relative spread of about sqrt(2 eps) ~ 1.4% per side).
            scaled = prefs * f
            rtol = 3e-2 if method.name == "epo" else 1e-2
            np.testing.assert_allclose(scaled[:, 0], scaled[:, 1], rtol=rtol, err_msg=method.name)

    def test_dtlz2_das_dennis(self):
        dtlz2 = problems.dtlz2(n_obj=3, n_var=6)
        # 15 vectors, shrunk towards the centre: a corner preference asks for an objective
        # near 0, where DTLZ2's other objectives have zero slope and a clipped run stalls.
        prefs = 0.7 * pareto.das_dennis(4, 3) + 0.1
        result = pareto.sweep(dtlz2, mtopt.epo(), jnp.full(6, 0.3),
                              optimizer=optax.adam(5e-3), num_steps=500, preferences=prefs,
                              bounds=dtlz2.bounds)
        f = result.losses
        chex.assert_shape(f, (15, 3))
        assert bool(jnp.all(jnp.isfinite(f)))
        assert bool(pareto.non_dominated_mask(f).all())
        # The DTLZ2 front is the positive unit sphere.
        np.testing.assert_allclose(jnp.linalg.norm(f, axis=1), 1.0, atol=1e-2)
        # 15 distinct points, each on its preference ray (EPO: r_i f_i all equal).
        assert float(pareto.lmin(f)) > 0.1
        scaled = prefs * f
        np.testing.assert_allclose(scaled, jnp.broadcast_to(scaled.mean(1, keepdims=True),
                                                            scaled.shape), rtol=5e-2)

    def test_vlmop2_dirichlet_order(self):
        vlmop2 = problems.vlmop2(n_var=4)
        prefs = pareto.dirichlet(jax.random.key(0), 2.0, 8, 2)
        result = pareto.sweep(vlmop2, mtopt.smooth_tchebycheff(mu=0.01), jnp.zeros(4),
                              optimizer=optax.adam(2e-2), num_steps=400, preferences=prefs,
                              bounds=vlmop2.bounds)
        f = result.losses
        assert bool(jnp.all(jnp.isfinite(f)))
        assert bool(pareto.non_dominated_mask(f).all())
        assert float(pareto.gd(f, vlmop2.pareto_front(1000))) < 5e-3
        order = np.argsort(np.asarray(prefs[:, 0]))
        assert bool(np.all(np.diff(np.asarray(f[order, 0])) < 0)), (prefs, f)


class TwoHeads(nnx.Module):
    def __init__(self, rngs):
        self.trunk = nnx.Linear(3, 16, rngs=rngs)
        self.heads = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
        return self.heads(jax.nn.tanh(self.trunk(x)))


class NnxModelTest(chex.TestCase):
    def test_nnx_two_heads(self):
        graphdef, params = nnx.split(TwoHeads(nnx.Rngs(0)))
        x = jax.random.normal(jax.random.key(1), (64, 3))
        y = jnp.stack([jnp.sin(x[:, 0]), jnp.sin(x[:, 0]) + x[:, 1]], axis=1)

        def task_losses(params, x, y):
            return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2, axis=0)

        prefs = pareto.uniform_preferences(3, margin=0.1)
        optimizer = optax.adam(1e-2)
        method = mtopt.smooth_tchebycheff()
        result = pareto.sweep(task_losses, method, params, optimizer=optimizer, num_steps=15,
                              args=(x, y), preferences=prefs)
        leaves = jax.tree.leaves(result.params)
        assert all(leaf.shape[0] == 3 for leaf in leaves)
        ref_params, ref_losses, _, _ = separate_run(
            task_losses, method, params, prefs[1], None, optimizer, 15, args=(x, y))
        chex.assert_trees_all_close(jax.tree.map(lambda l: l[1], result.params), ref_params,
                                    rtol=1e-4, atol=1e-5)
        model = nnx.merge(graphdef, jax.tree.map(lambda l: l[2], result.params))
        chex.assert_trees_all_close(task_losses(nnx.split(model)[1], x, y), result.losses[2],
                                    rtol=1e-5)
        start = task_losses(params, x, y)
        assert bool(jnp.all(result.losses < start[None, :]))


_SHARDED_SCRIPT = """
import jax
jax.config.update("jax_num_cpu_devices", 2)
import numpy as np, optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import mtopt
from mtopt import pareto, problems
problem = problems.vlmop2(n_var=3)
prefs = pareto.uniform_preferences(4, margin=0.1)
mesh = Mesh(np.array(jax.devices()), ("runs",))
sharded = jax.device_put(prefs, NamedSharding(mesh, PartitionSpec("runs")))
kw = dict(optimizer=optax.adam(0.05), num_steps=20, bounds=problem.bounds)
x0 = jax.numpy.full(3, 0.2)
plain = pareto.sweep(problem, mtopt.tchebycheff(), x0, preferences=prefs, **kw)
split = pareto.sweep(problem, mtopt.tchebycheff(), x0, preferences=sharded, **kw)
print(len(jax.devices()), len(split.losses.sharding.device_set),
      split.losses.sharding.is_fully_replicated,
      float(np.max(np.abs(np.asarray(plain.losses) - np.asarray(split.losses)))))
"""


def test_runs_sharded_over_two_devices():
    """Preferences sharded over 2 CPU devices: same result, outputs split by run."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], capture_output=True,
                         text=True, timeout=300, check=True)
    devices, used, replicated, diff = out.stdout.split()
    assert (devices, used, replicated) == ("2", "2", "False"), out.stdout
    assert float(diff) < 1e-6


class BadInputTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        self.problem = problems.vlmop2(n_var=2)
        self.kw = dict(optimizer=optax.sgd(0.1), num_steps=3)

    def test_preferences_wrong_shape(self):
        with pytest.raises(ValueError, match=r"preferences must have shape \(K, T\) = \(K, 2\)"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2),
                         preferences=jnp.array([0.5, 0.5]), **self.kw)
        with pytest.raises(ValueError, match=r"got shape \(4, 3\)"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2),
                         preferences=jnp.full((4, 3), 1 / 3), **self.kw)
        with pytest.raises(TypeError, match="preferences must be floating"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2),
                         preferences=jnp.ones((4, 2), jnp.int32), **self.kw)

    def test_run_count(self):
        with pytest.raises(ValueError, match="number of runs K is unknown"):
            pareto.sweep(self.problem, mtopt.mgda(), jnp.zeros(2), **self.kw)
        with pytest.raises(ValueError, match="leading run axis of 3 but there are 2"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros((3, 2)), batched_params=True,
                         preferences=pareto.uniform_preferences(2), **self.kw)
        with pytest.raises(ValueError, match="same leading run axis"):
            pareto.sweep(lambda p: jnp.stack([jnp.sum(p["a"]), jnp.sum(p["b"])]),
                         mtopt.mgda(), {"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 2))},
                         batched_params=True, **self.kw)

    def test_options(self):
        prefs = pareto.uniform_preferences(2, margin=0.1)
        with pytest.raises(ValueError, match="needs key="):
            pareto.sweep(self.problem, mtopt.rlw(), jnp.zeros(2), preferences=prefs, **self.kw)
        with pytest.raises(ValueError, match=r"record_every \(5\) must be at most"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2), preferences=prefs,
                         record_every=5, **self.kw)
        with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2), preferences=prefs,
                         optimizer=optax.sgd(0.1), num_steps=0)
        with pytest.raises(ValueError, match=r"bounds must be a pair"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2), preferences=prefs,
                         bounds=jnp.ones(2), **self.kw)
        with pytest.raises(TypeError, match="method must be an mtopt.Weighting"):
            pareto.sweep(self.problem, "epo", jnp.zeros(2), preferences=prefs, **self.kw)
        with pytest.raises(TypeError, match="optax GradientTransformation"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros(2), preferences=prefs,
                         optimizer=0.1, num_steps=3)
        with pytest.raises(ValueError, match="needs a preference vector"):
            pareto.sweep(self.problem, mtopt.epo(), jnp.zeros((2, 2)), batched_params=True,
                         **self.kw)
