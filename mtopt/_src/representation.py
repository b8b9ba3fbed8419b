"""Representation mode (MGDA-UB): weights from gradients w.r.t. a shared representation."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, gramian as gramian_lib, jacobian as jacobian_lib, objectives
from mtopt._src import nan_policy as nan_lib, step as step_lib

Array = jax.Array
PyTree = Any


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
    the norm of the shared-parameter gradient. It is LibMTL's ``rep_grad=True``.

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

    Returns:
      ``step(params, state, *args, key=None, preference=None) -> (grads, info,
      new_state)``, as :func:`mtopt.value_and_grad`; ``info.gramian`` is the
      Gramian in representation space.

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
    if method.needs is base.Needs.JACOBIAN:
        raise ValueError(
            f"{method.name} combines task gradients coordinate by coordinate; representation "
            "mode only supports loss-only and Gramian methods. Use mtopt.value_and_grad."
        )

    def step(params: PyTree, state: Any, *args: Any, key: Optional[Array] = None,
             preference: Optional[Array] = None) -> tuple[PyTree, step_lib.StepInfo, Any]:
        if method.stochastic:
            base.check_key(key, method.name)
        z, encode_vjp = jax.vjp(lambda p: encode(p, *args), params)

        def heads_fn(p: PyTree, rep: PyTree):
            return heads(p, rep, *args)

        fwd = jacobian_lib.forward(lambda pz: heads_fn(*pz), (params, z), has_aux=has_aux)
        losses = jax.lax.stop_gradient(fwd.losses)
        num_tasks = losses.shape[0]
        dtype = losses.dtype
        gram = None
        jac_z = None
        if method.needs is base.Needs.GRAMIAN or return_task_grads:

            def task_losses_of_z(rep: PyTree) -> Array:
                out = heads_fn(params, rep)
                out = out[0] if has_aux else out
                return objectives.parse_objectives(out)[0]

            _, z_vjp = jax.vjp(task_losses_of_z, z)
            eye = jnp.eye(num_tasks, dtype=dtype)
            jac_z = jacobian_lib.pull_rows(
                lambda c, _: z_vjp(c)[0], eye, jnp.zeros((num_tasks,), dtype),
                strategy=strategy, chunk_size=chunk_size,
            )
        if method.needs is base.Needs.GRAMIAN:
            gram = gramian_lib.gramian(jac_z)
        # The combined gradient comes from the one pullback below (its z-cotangent is
        # sum_i w_i dL_i/dz), so the weighted sum of jac_z is never formed here.
        weights, new_state = method.update(
            state, losses, gramian=gram, key=key, preference=preference
        )
        weights = jnp.asarray(weights)
        head_grads, z_cot = fwd.pullback(jax.lax.stop_gradient(weights), jnp.ones((), dtype))
        (trunk_grads,) = encode_vjp(z_cot)
        grads = jax.tree.map(lambda a, b: (a + b).astype(a.dtype), head_grads, trunk_grads)
        info = step_lib.build_info(
            losses, weights, fwd.penalty, gram,
            task_grads=jac_z if return_task_grads else None, aux=fwd.aux, names=fwd.names,
        )
        task_ok = jnp.isfinite(losses)
        if jac_z is not None:
            task_ok = nan_lib.task_finite(losses, nan_lib.rows_finite(jac_z, num_tasks))
        return nan_lib.apply_policy(nan_policy, grads, info, new_state, state, task_ok)

    return step
