"""mtopt.log_scalars: the logging hook, eager, under jit/scan, batched over seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtopt


def _losses(params, x):
    pred = x @ params
    return {"reg": jnp.mean((pred - 1.0) ** 2), "aux": jnp.mean((pred + 0.5) ** 2)}


def _setup():
    params = jnp.array([0.3, -0.2, 0.1])
    x = jnp.arange(12.0).reshape(4, 3) / 10.0
    return params, x


def test_scan_logs_every_k_steps_with_the_step_values():
    method = mtopt.mgda()
    step = mtopt.value_and_grad(_losses, method)
    params, x = _setup()
    logged = []

    def body(carry, t):
        p, s = carry
        grads, info, s = step(p, s, x)
        mtopt.log_scalars(info, lambda k, d: logged.append((k, d)), t, every=3)
        return (p - 0.1 * grads, s), info.losses

    (_, _), losses = jax.jit(lambda p: jax.lax.scan(body, (p, method.init(2)), jnp.arange(10)))(
        params
    )
    jax.effects_barrier()
    assert [k for k, _ in logged] == [0, 3, 6, 9]
    for k, scalars in logged:
        assert set(scalars) >= {"total", "loss/reg", "loss/aux", "weight/reg", "cosine/aux/reg"}
        assert all(isinstance(v, float) for v in scalars.values())
        np.testing.assert_allclose(scalars["loss/reg"], float(losses[k, 1]), rtol=1e-6)  # sorted: aux, reg
        np.testing.assert_allclose(scalars["weight/reg"] + scalars["weight/aux"], 1.0, rtol=1e-5)


def test_eager_call_writes_immediately_and_matches_info_scalars():
    params, x = _setup()
    method = mtopt.linear({"reg": 1.0, "aux": 0.5})
    _, info, _ = mtopt.value_and_grad(_losses, method, nan_policy="skip")(
        params, method.init(2), x
    )
    logged = []
    mtopt.log_scalars(info, lambda k, d: logged.append((k, d)), 7, prefix="train/")
    jax.effects_barrier()
    assert logged[0][0] == 7
    expected = {k: float(v) for k, v in info.scalars("train/").items()}
    assert logged[0][1] == expected
    assert logged[0][1]["train/skipped"] == 0.0


def test_vmapped_seeds_are_split_per_member():
    params, x = _setup()
    method = mtopt.mgda()
    step = jax.vmap(mtopt.value_and_grad(_losses, method), in_axes=(0, None, None))
    batch = jnp.stack([params, 2.0 * params, -params])
    _, info, _ = step(batch, method.init(2), x)
    logged = []
    mtopt.log_scalars(info, lambda k, d: logged.append(d), 0)
    jax.effects_barrier()
    scalars = logged[0]
    for k in range(3):
        np.testing.assert_allclose(scalars[f"seed{k}/loss/reg"], float(info.losses[k, 1]))
    assert not any(name.startswith("seed3/") for name in scalars)


def test_bad_every_is_rejected():
    params, x = _setup()
    method = mtopt.equal()
    _, info, _ = mtopt.value_and_grad(_losses, method)(params, method.init(2), x)
    with pytest.raises(ValueError, match="every must be a positive int"):
        mtopt.log_scalars(info, lambda k, d: None, 0, every=0)
