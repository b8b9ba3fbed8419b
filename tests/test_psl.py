"""Tests of mtopt.pareto Pareto set learning: PreferenceMLP and train_psl."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mtopt
from mtopt import pareto, problems
from mtopt.problems import Problem


def quadratic(n_var: int = 2) -> Problem:
    """A convex two-objective problem: f_1,2 = |x -+ a|^2 / 4 with |a| = 1 (LibMOON's VLMOP1).

    Pareto set x = t a, t in [-1, 1]; front f1 = (1 - t)^2 / 4, f2 = (1 + t)^2 / 4, i.e.
    sqrt(f1) + sqrt(f2) = 1: convex, so linear scalarization reaches all of it.
    """
    a = jnp.full((n_var,), 1.0 / np.sqrt(n_var), jnp.float32)

    def f(x):
        return jnp.stack([jnp.sum((x - a) ** 2), jnp.sum((x + a) ** 2)]) / 4.0

    def front(n_points):
        t = np.linspace(1.0, -1.0, n_points)
        return jnp.asarray(np.stack([(1 - t) ** 2 / 4, (1 + t) ** 2 / 4], 1), jnp.float32)

    lower, upper = jnp.full((n_var,), -1.0), jnp.full((n_var,), 1.0)
    return Problem(name="quadratic", n_var=n_var, n_obj=2, bounds=(lower, upper), f=f,
                   pareto_front=front, ref_point=jnp.ones(2))


@functools.lru_cache(maxsize=None)
def trained(problem_name: str, method_name: str):
    """Train once per (problem, method); shared by the tests that inspect the model."""
    problem = {"vlmop2": problems.vlmop2(n_var=4), "quadratic": quadratic()}[problem_name]
    method = mtopt.method(method_name)
    model, history = pareto.train_psl(
        problem, method, key=jax.random.key(0), num_steps=400, batch_size=64,
        hidden=(64, 64), optimizer=optax.adam(3e-3),
    )
    return problem, model, history


def objectives_on_grid(problem, model, n_points=20):
    prefs = pareto.uniform_preferences(n_points, margin=0.05)
    return prefs, jax.vmap(problem.f)(model(prefs))


class TrainPSLTest(chex.TestCase):
    def check_front(self, problem, model, igd_max):
        prefs, f = objectives_on_grid(problem, model)
        front = problem.pareto_front(500)
        assert bool(jnp.all(jnp.isfinite(f)))
        assert bool(pareto.non_dominated_mask(f).all())
        # Close to the true front (every output) and covering it (every front point).
        assert float(pareto.gd(f, front)) < 5e-3, float(pareto.gd(f, front))
        assert float(pareto.igd(f, front)) < igd_max, float(pareto.igd(f, front))
        # Different preferences, different solutions, in the order of the preferences:
        # more weight on f1 gives a smaller f1.
        assert bool(np.all(np.diff(np.asarray(f[:, 0])) < 0)), f[:, 0]
        return prefs, f

    def test_tchebycheff_vlmop2(self):
        problem, model, history = trained("vlmop2", "tchebycheff")
        prefs, f = self.check_front(problem, model, igd_max=0.04)
        # Tchebycheff solutions balance r_i f_i (up to the two extreme preferences, whose
        # solutions lie where VLMOP2's objectives are nearly flat).
        scaled = prefs * f
        np.testing.assert_allclose(scaled[2:-2, 0], scaled[2:-2, 1], rtol=0.15)
        # The training loss went down.
        assert float(history.loss[-50:].mean()) < 0.6 * float(history.loss[:5].mean())

    def test_epo_quadratic_reaches_the_rays(self):
        problem, model, _ = trained("quadratic", "epo")
        # The grid's preferences (margin 0.05) ask for f1 / f2 in [1/19, 19], not for the
        # ends of the front: IGD against the whole front is not small, against the exact
        # solutions it is.
        prefs, f = self.check_front(problem, model, igd_max=0.08)
        # EPO's solution for r: r1 f1 = r2 f2 on the front sqrt(f1) + sqrt(f2) = 1, so
        # sqrt(f1) = sqrt(r2) / (sqrt(r1) + sqrt(r2)).
        root = jnp.sqrt(prefs)
        s1 = root[:, 1] / (root[:, 0] + root[:, 1])
        exact = jnp.stack([s1**2, (1 - s1) ** 2], axis=1)
        np.testing.assert_allclose(f, exact, atol=0.02)
        assert float(pareto.igd(f, exact)) < 5e-3

    def test_linear_quadratic(self):
        """Linear scalarization reaches the whole convex front: x(r) = (r1 - r2) a."""
        problem, model, _ = trained("quadratic", "preference_linear")
        prefs, f = self.check_front(problem, model, igd_max=0.04)
        a = jnp.full((2,), 1.0 / np.sqrt(2.0))
        expected = (prefs[:, :1] - prefs[:, 1:]) * a[None, :]
        np.testing.assert_allclose(model(prefs), expected, atol=0.05)

    @chex.variants(with_jit=True, without_jit=True)
    def test_model_maps_any_preference(self):
        problem, model, _ = trained("vlmop2", "tchebycheff")
        prefs = pareto.dirichlet(jax.random.key(5), 1.0, 16, 2)
        prefs = jnp.concatenate([prefs, jnp.array([[1.0, 0.0], [0.0, 1.0]])])
        apply = self.variant(lambda r: model(r))
        batch = apply(prefs)
        chex.assert_shape(batch, (18, 4))
        lower, upper = problem.bounds
        assert bool(jnp.all((batch >= lower[None, :]) & (batch <= upper[None, :])))
        one_by_one = jax.vmap(apply)(prefs)
        chex.assert_trees_all_close(one_by_one, batch, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(apply(prefs[3]), batch[3], rtol=1e-5, atol=1e-6)

    @pytest.mark.slow  # a gradient method through train_psl also runs in test_epo_quadratic_reaches_the_rays
    def test_deterministic_epo_dtlz2(self):
        """Same key, same result; a Gramian method on three objectives runs."""
        dtlz2 = problems.dtlz2(n_obj=3, n_var=5)
        method = mtopt.epo()
        kw = dict(key=jax.random.key(1), num_steps=5, batch_size=8, hidden=(8,))
        m1, h1 = pareto.train_psl(dtlz2, method, **kw)
        m2, h2 = pareto.train_psl(dtlz2, method, **kw)
        chex.assert_shape(h1.losses, (5, 3))
        assert bool(jnp.all(jnp.isfinite(h1.loss)))
        chex.assert_trees_all_equal(nnx.state(m1), nnx.state(m2))
        chex.assert_trees_all_equal(h1, h2)
        chex.assert_shape(m1(jnp.ones(3) / 3), (5,))

    def test_stochastic_method_from_a_start_model(self):
        """A stochastic method continues from a given model, which is left unchanged."""
        problem, start, _ = trained("quadratic", "preference_linear")
        before = jax.tree.map(jnp.copy, nnx.state(start))
        model, history = pareto.train_psl(problem, mtopt.rlw(), key=jax.random.key(3),
                                          model=start, num_steps=3, batch_size=8)
        assert bool(jnp.all(jnp.isfinite(history.loss)))
        chex.assert_trees_all_equal(nnx.state(start), before)
        r = jnp.array([0.3, 0.7])
        assert float(jnp.abs(model(r) - start(r)).max()) > 0

    def test_default_model_is_libmoons(self):
        model = pareto.PreferenceMLP(2, 3, bounds=(0.0, 1.0), rngs=nnx.Rngs(0))
        kernels = [layer.kernel[...].shape for layer in model.layers]
        assert kernels == [(2, 256), (256, 256), (256, 256), (256, 256), (256, 3)]
        unbounded = pareto.PreferenceMLP(2, 3, hidden=(4,), rngs=nnx.Rngs(0))
        big = unbounded(jnp.array([100.0, 0.0]))  # a linear last layer: not squashed
        assert float(jnp.abs(big).max()) > 1.0
        _, params, rest = nnx.split(model, nnx.Param, ...)
        assert len(jax.tree.leaves(rest)) == 2  # the two bounds, not trained


class BadInputTest(chex.TestCase):
    def test_errors(self):
        problem = quadratic()
        key = jax.random.key(0)
        kw = dict(key=key, num_steps=2, batch_size=4, hidden=(4,))
        with pytest.raises(ValueError, match="needs a weighting method"):
            pareto.train_psl(problem, mtopt.graddrop(), **kw)
        with pytest.raises(TypeError, match="function has no 'f'"):
            pareto.train_psl(problem.f, mtopt.tchebycheff(), **kw)
        with pytest.raises(TypeError, match="method must be an mtopt.Weighting"):
            pareto.train_psl(problem, "tchebycheff", **kw)
        with pytest.raises(ValueError, match="num_steps must be an int >= 1"):
            pareto.train_psl(problem, mtopt.tchebycheff(), key=key, num_steps=0)
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            pareto.train_psl(problem, mtopt.tchebycheff(), key=key, num_steps=1, batch_size=0)
        with pytest.raises(ValueError, match="pass key="):
            pareto.train_psl(problem, mtopt.tchebycheff(), key=None, num_steps=1)
        with pytest.raises(ValueError, match=r"alpha must be a scalar or have shape"):
            pareto.train_psl(problem, mtopt.tchebycheff(), alpha=jnp.ones(3), **kw)
        wrong = pareto.PreferenceMLP(2, 3, hidden=(4,), rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match=r"to shape \(4, 3\), expected \(4, 2\)"):
            pareto.train_psl(problem, mtopt.tchebycheff(), model=wrong, **kw)
        model = pareto.PreferenceMLP(2, 3, hidden=(4,), rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match=r"expected a preference of shape \(2,\)"):
            model(jnp.ones(3))
        with pytest.raises(ValueError, match="n_var must be a positive int"):
            pareto.PreferenceMLP(2, 0, rngs=nnx.Rngs(0))
        with pytest.raises(ValueError, match="bounds must be a pair"):
            pareto.PreferenceMLP(2, 3, bounds=jnp.ones(3), rngs=nnx.Rngs(0))


# MoCo and DB-MTL build their own direction and are refused for that first.
@pytest.mark.parametrize("name", [n for n in mtopt.method_names()
                                  if mtopt.method_info(n).stateful and n not in ("moco", "db_mtl")])
def test_methods_whose_weights_depend_on_earlier_steps_are_refused(name):
    """train_psl starts every sampled preference from the initial state: a method whose
    weights depend on its history would run as another method (FAMO as log
    scalarisation, uncertainty weighting as fixed weights), so it is refused."""
    options = {"dwa": {"steps_per_epoch": 1},
               "pmtl": {"preferences": jnp.array([[0.5, 0.5], [0.8, 0.2]])}}.get(name, {})
    method = mtopt.method(name, **options)
    if not method.stateful:  # Nash-MTL at its defaults: its state is only a warm start
        assert name == "nash_mtl"
        method = mtopt.nash_mtl(update_weights_every=2)
    with pytest.raises(ValueError, match=rf"train_psl: the weights of {method.name} depend on "
                                         "its earlier steps"):
        pareto.train_psl(problems.vlmop2(n_var=2), method, key=jax.random.key(0), num_steps=1,
                         batch_size=2, hidden=(4,))
