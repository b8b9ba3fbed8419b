r"""The Gramian of the task gradients without the T x P Jacobian.

Row ``i`` of the Gramian is the Jacobian applied to the i-th task gradient,

.. math::
    G_{i,:} = J g_i = \frac{d}{d\epsilon} L(\theta + \epsilon g_i)\Big|_{\epsilon=0},

one reverse pass (``g_i = J^T e_i``) followed by one forward-mode pass (a JVP
of the loss vector along ``g_i``). Both reuse the residuals of a single
``jax.linearize`` of the loss function, so the forward pass runs once, and only
``chunk_size`` task gradients exist at any time (one by default): the working
memory is that of an ordinary training step plus one gradient, whatever T.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import data_parallel, jacobian as jacobian_lib

Array = jax.Array
PyTree = Any


class Linearized(NamedTuple):
    """A loss function linearised once at the current parameters.

    Attributes:
      losses: (T,) task losses.
      penalty: the scalar penalty, or ``None`` when the function has none.
      names: task names when the losses came as a dict, else ``None``.
      aux: the auxiliary output (``None`` without ``has_aux``).
      pullback: ``pullback(loss_cotangent (T,), penalty_cotangent ()) -> grads``.
      push: ``push(tangent) -> (T,)`` directional derivatives of the task losses.
      given_order: a loss dict's keys in the order the function produced them,
        when that is not the sorted order; else ``None``.
    """

    losses: Array
    penalty: Optional[Array]
    names: Optional[tuple[str, ...]]
    aux: Any
    pullback: Callable[[Array, Array], PyTree]
    push: Callable[[PyTree], Array]
    given_order: Optional[tuple[str, ...]] = None


def linearize(
    fn: Callable[..., Any],
    params: PyTree,
    *args: Any,
    has_aux: bool = False,
    kwargs: Optional[dict[str, Any]] = None,
) -> Linearized:
    """Run ``fn(params, *args, **kwargs)`` once under ``jax.linearize``; expose both
    directions."""
    meta: dict[str, Any] = {}
    (losses, penalty), jvp_fn, aux = jax.linearize(
        jacobian_lib.parsed_objective(fn, args, has_aux, meta, kwargs), params, has_aux=True
    )
    vjp_fn = jax.linear_transpose(jvp_fn, params)

    def push(tangent: PyTree) -> Array:
        tangent = jax.tree.map(data_parallel.match_varying, tangent, params)
        return jvp_fn(tangent)[0]

    return Linearized(
        losses=losses,
        penalty=penalty if meta["has_penalty"] else None,
        names=meta["names"],
        aux=aux,
        pullback=jacobian_lib.make_pullback(vjp_fn, losses, penalty),
        push=push,
        given_order=meta["given_order"],
    )


def gramian_rows(
    lin: Linearized,
    mask: PyTree,
    *,
    chunk_size: Optional[int] = None,
    mean_over: Optional[Callable[[Any], Any]] = None,
    dtype: jnp.dtype = jnp.float32,
) -> Array:
    r"""The (T, T) Gramian over the ``mask``-selected leaves, one task row at a time.

    For each task i: ``g_i = pullback(e_i)``, restricted to the shared leaves,
    then ``G[i] = push(g_i)``. ``chunk_size`` tasks run together (``lax.map``
    batch size; default 1). ``mean_over`` (data parallel) averages ``g_i`` and
    the row over devices, so the result is the Gramian of the averaged
    gradients. The result is symmetrised, ``(G + G^T) / 2``, in ``dtype``.
    """
    num_tasks = lin.losses.shape[0]
    loss_dtype = lin.losses.dtype
    eye = jnp.eye(num_tasks, dtype=loss_dtype)
    average = mean_over if mean_over is not None else (lambda x: x)

    def row(e_i: Array) -> Array:
        grad_i = average(lin.pullback(e_i, jnp.zeros((), loss_dtype)))
        tangent = jax.tree.map(lambda m, g: g if m else jnp.zeros_like(g), mask, grad_i)
        return average(lin.push(tangent)).astype(dtype)

    rows = jax.lax.map(row, eye, batch_size=1 if chunk_size is None else chunk_size)
    return 0.5 * (rows + rows.T)

