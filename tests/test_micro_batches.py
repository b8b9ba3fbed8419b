"""Gradient accumulation: ``value_and_grad(..., micro_batches=k)`` equals the full-batch step.

For every method family (loss-only with a rule that reads the losses, Gramian,
Jacobian with its own combination, stateful, with a penalty and aux output),
the losses, weights, Gramian and gradients of a batch split into k micro-batches
equal those of the whole batch; the Gramian is that of the accumulated
gradients, not the sum of the micro-batch Gramians; low memory is refused.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtopt

B, D = 12, 3
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(B, D)), jnp.float32)
Y = jnp.asarray(RNG.normal(size=(B, 2)), jnp.float32)
PARAMS = {"w": jnp.asarray(RNG.normal(size=(D, 4)), jnp.float32),
          "h": jnp.asarray(RNG.normal(size=(4, 2)), jnp.float32)}


def task_losses(p, x, y, *, offset=0.0):
    out = jnp.tanh(x @ p["w"]) @ p["h"]
    losses = {"a": jnp.mean((out[:, 0] - y[:, 0]) ** 2) + offset,
              "b": jnp.mean((out[:, 1] + y[:, 1]) ** 2)}
    penalty = 1e-2 * jnp.sum(p["w"] ** 2)
    return mtopt.Objectives(losses, penalty=penalty), jnp.mean(out, axis=0)


CASES = {
    "equal": {}, "log": {}, "uncertainty": {}, "gls": {},  # loss-only
    "mgda": {}, "upgrad": {}, "pcgrad": {}, "nash_mtl": {},  # Gramian
    "graddrop": {}, "moco": {},  # Jacobian, their own combination
}


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("name", sorted(CASES))
def test_micro_batched_step_equals_the_full_batch_step(name, k):
    method = mtopt.method(name, **CASES[name])
    state = method.init(2, PARAMS)
    key = jax.random.key(1)
    full = jax.jit(mtopt.value_and_grad(task_losses, method, has_aux=True))
    micro = jax.jit(mtopt.value_and_grad(task_losses, method, has_aux=True, micro_batches=k))
    g_full, i_full, s_full = full(PARAMS, state, X, Y, key=key, offset=0.5)
    g_micro, i_micro, s_micro = micro(PARAMS, state, X, Y, key=key, offset=0.5)
    np.testing.assert_allclose(i_micro.losses, i_full.losses, rtol=2e-6)
    np.testing.assert_allclose(i_micro.penalty, i_full.penalty, rtol=2e-6)
    np.testing.assert_allclose(i_micro.weights, i_full.weights, rtol=2e-5, atol=1e-7)
    if i_full.gramian is not None:
        np.testing.assert_allclose(i_micro.gramian, i_full.gramian, rtol=2e-5, atol=1e-6)
    for leaf in g_full:
        np.testing.assert_allclose(g_micro[leaf], g_full[leaf], rtol=2e-5, atol=1e-6)
    chex_equal = jax.tree.map(lambda a, b: np.allclose(a, b, rtol=2e-5, atol=1e-6),
                              s_micro, s_full)
    assert all(jax.tree.leaves(chex_equal))
    assert i_micro.aux.shape == (k, 2)  # one aux per micro-batch
    np.testing.assert_allclose(jnp.mean(i_micro.aux, axis=0), i_full.aux, rtol=1e-5, atol=1e-6)


def test_the_gramian_is_that_of_the_accumulated_gradients():
    method = mtopt.mgda()
    _, info, _ = mtopt.value_and_grad(task_losses, method, has_aux=True, micro_batches=3)(
        PARAMS, method.init(2), X, Y)
    per_batch = []
    for m in range(3):
        sl = slice(4 * m, 4 * (m + 1))
        per_batch.append(mtopt.value_and_grad(task_losses, method, has_aux=True)(
            PARAMS, method.init(2), X[sl], Y[sl])[1].gramian)
    mean_of_gramians = sum(per_batch) / 3
    assert not np.allclose(np.asarray(info.gramian), np.asarray(mean_of_gramians), rtol=1e-2)


def test_low_memory_and_bad_splits_are_refused():
    with pytest.raises(ValueError, match="micro_batches with gramian=.low_memory.: the Gramian of "
                                         "the accumulated gradients"):
        mtopt.value_and_grad(task_losses, mtopt.mgda(), has_aux=True, low_memory=True,
                             micro_batches=2)
    method = mtopt.equal()
    step = mtopt.value_and_grad(task_losses, method, has_aux=True, micro_batches=5)
    with pytest.raises(ValueError, match=r"leaf \[0\] has shape \(12, 3\), not a multiple of 5"):
        step(PARAMS, method.init(2), X, Y)
    with pytest.raises(ValueError, match="micro_batches must be a positive int"):
        mtopt.value_and_grad(task_losses, method, micro_batches=0)


def test_optax_multisteps_fits_fixed_weights_not_gramian_methods():
    """For fixed weights, optax.MultiSteps over the micro-batches' ordinary steps is the
    accumulated step; for a Gramian method it weights each micro-batch on its own and so
    is a different answer than micro_batches=k (documented in docs/performance.md)."""
    import optax

    k = 3
    xs, ys = X.reshape(k, B // k, D), Y.reshape(k, B // k, 2)
    for name, same in (("linear", True), ("mgda", False)):
        method = mtopt.linear([1.0, 0.5]) if name == "linear" else mtopt.mgda()
        accumulated, _, _ = mtopt.value_and_grad(task_losses, method, has_aux=True,
                                                 micro_batches=k)(PARAMS, method.init(2), X, Y)
        with jax.numpy_dtype_promotion("standard"):
            multi = optax.MultiSteps(optax.sgd(1.0), every_k_schedule=k)
            state, params = multi.init(PARAMS), PARAMS
            step = mtopt.value_and_grad(task_losses, method, has_aux=True)
            for m in range(k):
                grads, _, _ = step(PARAMS, method.init(2), xs[m], ys[m])
                updates, state = multi.update(grads, state, params)
                params = optax.apply_updates(params, updates)
        moved = jax.tree.map(lambda a, b: b - a, params, PARAMS)  # = the averaged gradient
        close = all(np.allclose(moved[leaf], accumulated[leaf], rtol=1e-5, atol=1e-6)
                    for leaf in PARAMS)
        assert close == same, name
