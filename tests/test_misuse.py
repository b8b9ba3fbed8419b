"""The ways a user can get a step wrong, and what mtopt does about each (issue 11).

Every case here either gives the right answer or fails loudly with a message
that says what was expected: dicts of losses through JAX transforms, weights and
preferences by task name, forgotten reductions, states made for another T,
integer parameter leaves, forgotten ``has_aux``, bad options, preferences given
to methods that read none, wrong mesh axes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtopt


def two_named(p):
    # Built in non-sorted order on purpose.
    return {"seg": jnp.sum((p - 1.0) ** 2), "depth": 10.0 * jnp.sum((p + 1.0) ** 2)}


P0 = jnp.array([0.3, -0.2])


# ---------------------------------------------------------------- item 15: task order


@pytest.mark.parametrize("transform", ["none", "jit", "checkpoint", "tree_map"])
def test_dict_task_order_is_sorted_whatever_the_transform(transform):
    wrap = {
        "none": lambda f: f,
        "jit": lambda f: (lambda p: jax.jit(f)(p)),
        "checkpoint": lambda f: (lambda p: jax.checkpoint(f)(p)),
        "tree_map": lambda f: (lambda p: jax.tree.map(lambda v: v, f(p))),
    }[transform]
    method = mtopt.linear({"seg": 1.0, "depth": 0.1})
    grads, info, _ = mtopt.value_and_grad(wrap(two_named), method)(P0, method.init(2))
    assert info.names == ("depth", "seg")
    np.testing.assert_allclose(info.weights, [0.1, 1.0], rtol=1e-6)
    ref = jax.grad(lambda p: 1.0 * two_named(p)["seg"] + 0.1 * two_named(p)["depth"])(P0)
    np.testing.assert_allclose(grads, ref, rtol=1e-6)


def test_positional_weights_with_an_unsorted_loss_dict_are_refused():
    method = mtopt.linear([1.0, 0.1])
    with pytest.raises(ValueError, match=r"keys come in the order \['seg', 'depth'\].*sorted"):
        mtopt.value_and_grad(two_named, method)(P0, method.init(2))
    pref = mtopt.preference_linear()
    with pytest.raises(ValueError, match="the preference vector, given by position"):
        mtopt.value_and_grad(two_named, pref)(P0, pref.init(2), preference=jnp.array([0.9, 0.1]))
    # A loss dict already in sorted order takes positional options.
    sorted_fn = lambda p: {"depth": two_named(p)["depth"], "seg": two_named(p)["seg"]}  # noqa: E731
    _, info, _ = mtopt.value_and_grad(sorted_fn, method)(P0, method.init(2))
    np.testing.assert_allclose(info.weights, [1.0, 0.1], rtol=1e-6)


def test_weights_and_preferences_by_name_are_checked_against_the_loss_names():
    method = mtopt.linear({"seg": 1.0, "normals": 0.1})
    with pytest.raises(ValueError, match=r"missing \['depth'\], unknown \['normals'\]"):
        mtopt.value_and_grad(two_named, method)(P0, method.init(2))
    unnamed = lambda p: jnp.stack([jnp.sum(p), jnp.sum(p ** 2)])  # noqa: E731
    with pytest.raises(ValueError, match="returns unnamed losses"):
        mtopt.value_and_grad(unnamed, mtopt.linear({"a": 1.0, "b": 2.0}))(
            P0, mtopt.equal().init(2))
    pref = mtopt.preference_linear()
    _, info, _ = mtopt.value_and_grad(two_named, pref)(
        P0, pref.init(2), preference={"seg": 0.75, "depth": 0.25})
    np.testing.assert_allclose(info.weights, [0.25, 0.75], rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown \['sge'\]"):
        mtopt.value_and_grad(two_named, pref)(
            P0, pref.init(2), preference={"sge": 0.75, "depth": 0.25})


# ------------------------------------------------- item 17: every state knows its T


def test_a_forgotten_batch_mean_is_an_error_not_b_tasks():
    fn = lambda p, x: (p - x) ** 2  # noqa: E731 - (B,) per-example losses, mean forgotten
    for name in ("equal", "mgda", "upgrad", "pcgrad"):
        method = mtopt.method(name)
        step = mtopt.value_and_grad(fn, method)
        with pytest.raises(ValueError, match="initialised for 1 tasks but the step received 3"):
            step(jnp.zeros(3), method.init(1), jnp.ones(3), key=jax.random.key(0))


@pytest.mark.parametrize("name", ["equal", "mgda", "upgrad", "dualproj", "config", "cagrad",
                                  "aligned_mtl", "imtl_g", "pcgrad", "graddrop", "rlw", "epo"])
def test_stateless_methods_check_the_task_count_of_their_state(name):
    method = mtopt.method(name)
    state = method.init(3)
    assert state.num_tasks == 3
    g = jnp.eye(2)
    kwargs = dict(gramian=g, jacobian={"w": jnp.eye(2)}, key=jax.random.key(0))
    if mtopt.method_info(name).preference:
        kwargs["preference"] = jnp.array([0.5, 0.5])
    with pytest.raises(ValueError, match="initialised for 3 tasks but the step received 2"):
        method.update(state, jnp.ones(2), **kwargs)


def test_state_none_is_a_clear_error_on_every_path():
    fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum(p)])  # noqa: E731
    for method, kw in ((mtopt.equal(), {}), (mtopt.mgda(), {}), (mtopt.mgda(), {"low_memory": True})):
        with pytest.raises(ValueError, match="state is None; pass the state returned by"):
            mtopt.value_and_grad(fn, method, **kw)(P0, None)
    with pytest.raises(ValueError, match="state is None"):
        mtopt.representation_value_and_grad(lambda p: p, lambda p, z: fn(z), mtopt.mgda())(P0, None)


# ------------------------------------------- item 8: integer and non-array leaves


@pytest.mark.parametrize("method,kw", [("equal", {}), ("mgda", {}), ("mgda", {"low_memory": True}),
                                       ("graddrop", {})])
def test_integer_parameter_leaves_are_named_in_the_error(method, kw):
    params = {"w": jnp.ones(2), "count": jnp.array(3, jnp.int32), "flag": jnp.array(True)}
    fn = lambda p: jnp.stack([jnp.sum(p["w"] ** 2), jnp.sum(p["w"])])  # noqa: E731
    m = mtopt.method(method)
    step = mtopt.value_and_grad(fn, m, **kw)
    with pytest.raises(TypeError, match=r"\['count'\] \(dtype int32\), \['flag'\] \(dtype bool\)"):
        step(params, m.init(2), key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"\['count'\] \(dtype int32\)"):
        mtopt.task_jacobian(fn)(params)


# ------------------------------------------------ item 18: forgotten has_aux and friends


def test_a_forgotten_has_aux_is_named():
    acc_int = lambda p: (jnp.stack([jnp.sum(p), jnp.sum(p ** 2)]), jnp.array(3))  # noqa: E731
    with pytest.raises(TypeError, match="pass has_aux=True"):
        mtopt.value_and_grad(acc_int, mtopt.equal())(P0, mtopt.equal().init(2))
    dict_aux = lambda p: (jnp.stack([jnp.sum(p), jnp.sum(p ** 2)]), {"acc": jnp.sum(p)})  # noqa: E731
    with pytest.raises(TypeError, match="pass has_aux=True"):
        mtopt.value_and_grad(dict_aux, mtopt.equal())(P0, mtopt.equal().init(2))
    vector_aux = lambda p: (jnp.sum(p), p)  # noqa: E731 - (loss, predictions)
    with pytest.raises(TypeError, match="pass has_aux=True"):
        mtopt.value_and_grad(vector_aux, mtopt.equal())(P0, mtopt.equal().init(2))


def test_registry_names_the_missing_required_options():
    with pytest.raises(ValueError, match=r"Method 'linear' needs the option\(s\) \['weights'\]"):
        mtopt.method("linear")
    with pytest.raises(ValueError, match=r"Method 'pmtl' needs the option\(s\) \['preferences'\]"):
        mtopt.method("pmtl")


def test_shared_with_one_argument_is_refused_at_set_up():
    with pytest.raises(TypeError, match=r"shared must be a callable \(path, leaf\) -> bool"):
        mtopt.value_and_grad(lambda p: jnp.stack([p[0], p[1]]), mtopt.mgda(),
                             shared=lambda path: True)


def test_wrong_axis_name_inside_shard_map_names_the_mesh_axes():
    mesh = jax.make_mesh((1,), ("data",))
    fn = lambda p, x: jnp.stack([jnp.mean((x - p) ** 2), jnp.mean(x * p)])  # noqa: E731
    method = mtopt.equal()
    step = mtopt.value_and_grad(fn, method, axis_name="batch")
    sharded = jax.shard_map(
        lambda p, s, x: step(p, s, x)[0], mesh=mesh,
        in_specs=(jax.P(), jax.P(), jax.P("data")), out_specs=jax.P())
    batch = jax.device_put(jnp.ones(4), jax.NamedSharding(mesh, jax.P("data")))
    with pytest.raises(ValueError, match=r"axis_name='batch' is not a mesh axis.*\('data',\)"):
        jax.jit(sharded)(jnp.ones(()), method.init(2), batch)
    with pytest.raises(ValueError, match="no shard_map"):
        step(jnp.ones(()), method.init(2), jnp.ones(4))


# --------------------------------------------------- item 16 (step side): preferences


def test_a_preference_for_a_method_that_reads_none_is_an_error():
    fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum((p - 1) ** 2)])  # noqa: E731
    for name in ("mgda", "equal", "nash_mtl"):
        method = mtopt.method(name)
        with pytest.raises(ValueError, match="takes no preference vector"):
            mtopt.value_and_grad(fn, method)(P0, method.init(2), preference=jnp.array([0.5, 0.5]))
    upgrad = mtopt.upgrad()  # an optional preference is accepted
    mtopt.value_and_grad(fn, upgrad)(P0, upgrad.init(2), preference=jnp.array([0.5, 0.5]))


# ------------------------------------------ item 11: what return_task_grads computes


def test_return_task_grads_with_a_loss_only_method_builds_no_gramian():
    fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum((p - 1) ** 2)])  # noqa: E731
    method = mtopt.equal()
    _, info, _ = mtopt.value_and_grad(fn, method, return_task_grads=True)(P0, method.init(2))
    assert info.gramian is None and info.cosines is None
    np.testing.assert_allclose(info.task_grads, jax.jacrev(fn)(P0))
    traced = jax.make_jaxpr(mtopt.value_and_grad(fn, method, return_task_grads=True))(
        P0, method.init(2))
    plain = jax.make_jaxpr(mtopt.value_and_grad(fn, method, return_task_grads=True,
                                                diagnostics=True))(P0, method.init(2))
    assert len(traced.eqns) < len(plain.eqns)
    _, info, _ = mtopt.value_and_grad(fn, method, diagnostics=True)(P0, method.init(2))
    assert info.gramian is not None


# ------------------------------------------------- item 7: one name per method


def test_every_registry_name_is_the_method_name():
    for name in mtopt.method_names():
        info = mtopt.method_info(name)
        options = {}
        if "weights" in info.required_options():
            options["weights"] = [1.0, 1.0]
        if "preferences" in info.required_options():
            options["preferences"] = jnp.array([[0.5, 0.5]])
        if "steps_per_epoch" in info.options():  # as the runner fills it (DWA)
            options["steps_per_epoch"] = 1
        method = mtopt.method(name, **options)
        assert method.name == name
        assert mtopt.method_info(method.name) is info


# ------------------------------------------- item 9: one option-validation mechanism


def _int_options(info):
    return [k for k, v in info.options().items() if isinstance(v, int) and not isinstance(v, bool)
            and k not in ("rescale", "index")]


def _float_tol_options(info):
    return [k for k, v in info.options().items() if k in ("tol", "eps", "norm_eps", "reg_eps")]


def _required(info):
    options = {}
    if "weights" in info.required_options():
        options["weights"] = [1.0, 1.0]
    if "preferences" in info.required_options():
        options["preferences"] = jnp.array([[0.5, 0.5]])
    return options


@pytest.mark.parametrize("name", mtopt.method_names())
def test_every_method_rejects_bool_ints_and_negative_tolerances_alike(name):
    info = mtopt.method_info(name)
    for option in _int_options(info):
        with pytest.raises(ValueError, match=rf"^{name}: {option} must be .*int.*, got True\.$"):
            mtopt.method(name, **_required(info), **{option: True})
        with pytest.raises(ValueError, match=rf"^{name}: {option} must be .*int.*, got 1\.5\.$"):
            mtopt.method(name, **_required(info), **{option: 1.5})
    for option in _float_tol_options(info):
        with pytest.raises(ValueError, match=rf"^{name}: {option} must be .*, got -1\.0\.$"):
            mtopt.method(name, **_required(info), **{option: -1.0})
        with pytest.raises(ValueError, match=rf"^{name}: {option} must be"):
            mtopt.method(name, **_required(info), **{option: float("nan")})


def test_linear_with_traced_weights_says_why():
    def build(w):
        mtopt.linear(w)
        return w

    with pytest.raises(TypeError, match="concrete numbers known when the method is built.*preference_linear"):
        jax.jit(build)(jnp.array([1.0, 2.0]))


# ---------------------------------------- item 10: one key use on every path


def test_loss_only_stochastic_method_draws_the_same_numbers_on_every_path():
    fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum((p - 1) ** 2), jnp.sum(p)])  # noqa: E731
    method = mtopt.rlw()
    key = jax.random.key(3)
    outs = []
    for kw in ({}, {"diagnostics": True}, {"diagnostics": True, "low_memory": True},
               {"return_task_grads": True}):
        _, info, _ = mtopt.value_and_grad(fn, method, **kw)(P0, method.init(3), key=key)
        outs.append(np.asarray(info.weights))
    for w in outs[1:]:
        np.testing.assert_allclose(w, outs[0], rtol=1e-6)
