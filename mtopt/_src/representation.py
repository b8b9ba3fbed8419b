"""Representation mode (MGDA-UB): weights from gradients w.r.t. a shared representation."""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, gramian as gramian_lib, jacobian as jacobian_lib
from mtopt._src import nan_policy as nan_lib, options, step as step_lib

Array = jax.Array
PyTree = Any
GramianForm = Literal["full", "batch_summed"]
GRAMIAN_FORMS = ("full", "batch_summed")


def representation_value_and_grad(
    encode: Callable[..., PyTree],
    heads: Callable[..., Any],
    method: base.Weighting,
    *,
    has_aux: bool = False,
    strategy: jacobian_lib.Strategy = "batched",
    chunk_size: Optional[int] = None,
    return_task_grads: bool = False,
    nan_policy: nan_lib.NanPolicy = "propagate",
    gramian: GramianForm = "full",
    trainable: jacobian_lib.Trainable = None,
) -> Callable[..., tuple[PyTree, step_lib.StepInfo, Any]]:
    r"""Multi-task gradient with the weights computed on a shared representation.

    The model is split as ``z = encode(params, *args)`` (the shared trunk) and
    ``losses = heads(params, z, *args)`` (the task-specific part). The method
    reads the per-task gradients with respect to ``z`` instead of the
    parameters:

    .. math::
        G^z_{ij} = \Big\langle \frac{\partial L_i}{\partial z},
        \frac{\partial L_j}{\partial z} \Big\rangle, \qquad
        w = \text{method}(G^z, L), \qquad
        \text{grads} = \nabla_\theta \Big(\sum_i \mathrm{sg}(w_i) L_i + R\Big).

    For MGDA this is MGDA-UB (Sener & Koltun, "Multi-Task Learning as
    Multi-Objective Optimization", NeurIPS 2018): minimising
    :math:`\|\sum_i w_i \partial L_i / \partial z\|` minimises an upper bound on
    the norm of the shared-parameter gradient.

    Two Gramians of the representation gradients, because the references
    differ (``gramian=``):

    - ``"full"`` (default): the inner product over every entry of ``z``, as
      above, summed over the batch of per-example representations; this is
      what Sener & Koltun's code computes (it flattens ``dL_i/dz``).
    - ``"batch_summed"``: each task's representation gradient is first summed
      over the leading (batch) axis of every ``z`` leaf,
      :math:`\bar z_i = \sum_b \partial L_i/\partial z_b`, and the Gramian is
      :math:`\langle \bar z_i, \bar z_j\rangle`: LibMTL's ``rep_grad=True``
      (its ``_get_grads`` sums the ``[T, B, ...]`` gradients over the batch
      before the weighting). The two agree at batch size 1 only.

    Cost: one forward pass, T backward passes through ``heads`` only (to get
    the per-task ``dL_i/dz``; cheap when the heads are small) and **one**
    backward pass through ``heads`` and ``encode`` for the combined gradient.

    How each parameter is treated: every parameter (trunk and heads) receives
    the gradient of the one weighted loss :math:`\sum_i w_i L_i + R`. A head
    used by task k alone therefore gets :math:`w_k \nabla L_k`; the trunk gets
    :math:`J_{enc}^\top \sum_i w_i \partial L_i/\partial z`. (LibMTL instead
    updates heads with the unweighted task losses; use ``shared`` with
    :func:`mtopt.value_and_grad` if the weights must match the parameter-space
    method exactly.) ``heads`` must not depend on trunk parameters except
    through ``z`` for the bound to mean anything, but the gradient is correct
    either way. Methods that need the full Jacobian (per-coordinate rules) are
    applied to the representation gradients and combined in parameter space
    through their weights only, so they are rejected here.

    Args:
      encode: ``encode(params, *args) -> z`` (any pytree of arrays).
      heads: ``heads(params, z, *args)`` returning the task losses in any form
        :func:`mtopt.value_and_grad` accepts (vector, sequence, dict,
        :class:`mtopt.Objectives`), or ``(losses, aux)`` with ``has_aux``.
      method: a :class:`mtopt.Weighting`.
      has_aux: whether ``heads`` returns auxiliary output.
      strategy: ``"batched"`` or ``"sequential"`` for the T head backward passes.
      chunk_size: tasks per head backward pass.
      return_task_grads: return the per-task gradients **with respect to z** in
        ``info.task_grads``.
      nan_policy: ``"propagate"``, ``"skip"`` or ``"raise"``, as in
        :func:`mtopt.value_and_grad` (task attribution from the losses and,
        when computed, the representation gradients).
      gramian: ``"full"`` or ``"batch_summed"`` (see above).
      trainable: which leaves of ``params`` are differentiated, as in
        :func:`mtopt.value_and_grad` (default: the array leaves).

    Returns:
      ``step(params, state, *args, key=None, preference=None, **kwargs) ->
      (grads, info, new_state)``, as :func:`mtopt.value_and_grad` (same key
      use, weights check, ``StepInfo`` and NaN policy; keyword arguments reach
      ``encode`` and ``heads``); ``info.gramian`` is the Gramian in
      representation space. For a method that rescales the shared gradient
      (Nash-MTL's ``max_norm``) the trunk's gradient is rescaled, the heads'
      is not.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import mtopt
      >>> encode = lambda p, x: jnp.tanh(x @ p["trunk"])
      >>> heads = lambda p, z, x: jnp.stack([jnp.mean((z @ p["h1"]) ** 2),
      ...                                    jnp.mean((z @ p["h2"] - 1.0) ** 2)])
      >>> params = {"trunk": jnp.ones((3, 4)) / 4, "h1": jnp.ones(4), "h2": -jnp.ones(4)}
      >>> step = jax.jit(mtopt.representation_value_and_grad(encode, heads, mtopt.mgda()))
      >>> grads, info, _ = step(params, mtopt.mgda().init(2), jnp.ones((5, 3)))
      >>> info.gramian.shape, float(jnp.sum(info.weights))
      ((2, 2), 1.0)
    """
    jacobian_lib.check_strategy(strategy, chunk_size)
    nan_lib.check_policy(nan_policy)
    options.boolean(has_aux, "has_aux", "representation_value_and_grad")
    options.boolean(return_task_grads, "return_task_grads", "representation_value_and_grad")
    options.choice(gramian, "gramian", "representation_value_and_grad", GRAMIAN_FORMS)
    base.check_weighting(method, "representation_value_and_grad")
    if method.needs is base.Needs.JACOBIAN:
        raise ValueError(
            f"{method.name} combines task gradients coordinate by coordinate; representation "
            "mode only supports loss-only and Gramian methods. Use mtopt.value_and_grad."
        )
    needs_rows = method.needs is base.Needs.GRAMIAN or return_task_grads

    def produce(params: PyTree, merge, args: tuple, kwargs: dict) -> step_lib.Produced:
        full = (lambda p: p) if merge is None else merge
        z, encode_vjp = jax.vjp(lambda p: encode(full(p), *args, **kwargs), params)
        # One trace of the heads, differentiable in (params, z): its pullback gives
        # both the per-task representation gradients and the combined gradient.
        fwd = jacobian_lib.forward(
            lambda pz: heads(full(pz[0]), pz[1], *args, **kwargs), (params, z), has_aux=has_aux
        )
        losses = jax.lax.stop_gradient(fwd.losses)
        num_tasks = losses.shape[0]
        dtype = losses.dtype
        jac_z = gram = grads_ok = None
        if needs_rows:
            rows = jacobian_lib.pull_rows(
                fwd.pullback, jnp.eye(num_tasks, dtype=dtype), jnp.zeros((num_tasks,), dtype),
                strategy=strategy, chunk_size=chunk_size,
            )
            jac_z = rows[1]  # the head-parameter rows are unused and removed by XLA
            grads_ok = nan_lib.rows_finite(jac_z, num_tasks)
        if method.needs is base.Needs.GRAMIAN:
            rep = jac_z
            if gramian == "batch_summed":
                rep = jax.tree.map(lambda r: jnp.sum(r, axis=1) if r.ndim > 1 else r, jac_z)
            gram = gramian_lib.gramian(rep)

        def pull(w: Array, ws: Array) -> PyTree:
            # Heads get sum_i w_i grad L_i; the trunk gets J_enc^T of the z-cotangent,
            # built with the shared-leaf weights (ws is w unless the method rescales).
            one = jnp.ones((), dtype)
            if ws is w:
                head_grads, z_cot = fwd.pullback(w, one)
            else:
                both = jax.vmap(fwd.pullback)(jnp.stack([w, ws]), jnp.stack([one, one]))
                head_grads = jax.tree.map(lambda x: x[0], both[0])
                z_cot = jax.tree.map(lambda x: x[1], both[1])
            (trunk_grads,) = encode_vjp(z_cot)
            return jax.tree.map(lambda a, b: (a + b).astype(a.dtype), head_grads, trunk_grads)

        return step_lib.Produced(
            losses=losses, penalty=fwd.penalty, names=fwd.names, given_order=fwd.given_order,
            aux=fwd.aux, gramian=gram, jacobian=None, task_grads=jac_z, grads_ok=grads_ok,
            pull=pull,
        )

    def step(params: PyTree, state: Any, *args: Any, key: Optional[Array] = None,
             preference: Optional[Array] = None,
             **kwargs: Any) -> tuple[PyTree, step_lib.StepInfo, Any]:
        step_lib.check_step_inputs(method, state, key)
        diff, merge = jacobian_lib.split_trainable(params, trainable)
        jacobian_lib.check_float_params(diff)
        produced = produce(diff, merge, args, kwargs)
        return step_lib.finish(method, state, produced, key=key, preference=preference,
                               return_task_grads=return_task_grads, nan_policy=nan_policy)

    return step
