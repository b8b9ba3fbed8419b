r"""PCGrad: project conflicting gradients (gradient surgery), from the Gramian alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mtopt._src import base, options, rule

__all__ = ["pcgrad", "pcgrad_weights"]

_REDUCTIONS = ("sum", "mean")


@functools.partial(jax.jit, static_argnames="eps")
def _project_one(
    coeffs: base.Array, order: base.Array, gram: base.Array, eps: float
) -> base.Array:
    r"""Project one task's gradient, held as coefficients on the raw gradients.

    ``coeffs`` (T,) represents :math:`pc = \sum_k c_k g_k`, so
    :math:`\langle pc, g_j\rangle = (c^\top G)_j`; removing the component of
    ``pc`` along :math:`g_j` subtracts from :math:`c_j` only.
    """

    def visit(position, c):
        j = order[position]
        inner = jnp.dot(c, gram[:, j])
        step = jnp.where(inner < 0, inner / (gram[j, j] + eps), 0.0)
        return c.at[j].add(-step)

    return jax.lax.fori_loop(0, order.shape[0], visit, coeffs)


def _options(reduction: str, eps: float) -> dict:
    return dict(
        reduction=options.choice(reduction, "reduction", "pcgrad", _REDUCTIONS),
        eps=options.real(eps, "eps", "pcgrad", nonnegative=True),
    )


def pcgrad_weights(
    gramian: base.Array, key: base.Array, *, reduction: str = "sum", eps: float = 1e-8
) -> tuple[base.Array, base.SolverInfo]:
    r"""The PCGrad rule on a Gramian: the coefficients of :math:`\sum_i pc_i` on the raw
    gradients, each :math:`pc_i` projected off the tasks it conflicts with in
    the random order row i of :func:`visiting order <mtopt.rules.visiting_orders>`
    drawn from ``key`` (Yu et al. 2020).

    The math and the conventions (order, reduction, relative ``eps``) are
    those of :func:`mtopt.pcgrad`, whose ``update`` calls this.

    Args:
      gramian: (T, T) Gramian ``J J^T`` of the task gradients.
      key: a PRNG key (the visiting orders).
      reduction, eps: as in :func:`mtopt.pcgrad`.

    Returns:
      ``(weights, solver_info)``; T projection passes, no iterative solve
      (0 iterations, converged).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mtopt.rules import pcgrad_weights
      >>> jac = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> w, _ = pcgrad_weights(jac @ jac.T, jax.random.key(0))
      >>> [round(float(x), 4) for x in w]
      [2.0, 1.5]
    """
    opts = _options(reduction, eps)
    gram = rule.check_gramian(gramian, "pcgrad")
    key = base.check_key(key, "pcgrad")
    num_tasks = gram.shape[0]
    gram, _ = rule.unit_diagonal_scale(gram)
    orders = rule.visiting_orders(key, num_tasks)
    coeffs = jax.vmap(_project_one, in_axes=(0, 0, None, None))(
        jnp.eye(num_tasks, dtype=gram.dtype), orders, gram, opts["eps"]
    )
    weights = jnp.sum(coeffs, axis=0)
    if opts["reduction"] == "mean":
        weights = weights / num_tasks
    return weights, base.exact_solver_info()


def pcgrad(reduction: str = "sum", *, eps: float = 1e-8) -> base.Weighting:
    r"""PCGrad: remove, task by task, the components that conflict with other tasks.

    For every task :math:`i`, start from :math:`pc_i = g_i` and visit the tasks
    :math:`j` in a random order; whenever :math:`\langle pc_i, g_j\rangle < 0`,
    project :math:`pc_i` onto the normal plane of :math:`g_j`:

    .. math::

        pc_i \leftarrow pc_i - \frac{\langle pc_i, g_j\rangle}{\|g_j\|^2 + \epsilon}\, g_j,
        \qquad d = \sum_i pc_i \;(\text{or } \tfrac1T \sum_i pc_i).

    Every :math:`pc_i` stays a linear combination :math:`pc_i = \sum_k c_{ik} g_k`
    of the raw gradients, and :math:`\langle pc_i, g_j\rangle = (c_i^\top G)_j`, so
    the whole procedure runs on the Gramian :math:`G` (T x T, :math:`O(T^3)`
    work, a ``lax.fori_loop`` of T steps per task, vmapped over tasks). The
    weights on the raw gradients are :math:`w = \sum_i c_i` (or the mean).

    Conventions pinned:

    - **Projection order.** As in LibMTL and the Nash-MTL repository (itself
      from Pytorch-PCGrad): each task :math:`i` draws its own random order of
      **all** T tasks, itself included (visiting itself is a no-op unless earlier
      projections turned :math:`pc_i` against :math:`g_i`). Task i's order is
      row i of ``argsort(jax.random.uniform(key, (T, T)), axis=-1)`` (a uniform
      random permutation per row), so the same key gives the same weights. The
      authors' TensorFlow code instead shuffles the tasks once per step and
      uses that one order for every :math:`i`; TorchJD draws one order per task
      but skips :math:`j = i`.
    - **Reduction.** ``"sum"`` (LibMTL, Nash-MTL, the paper): with no conflict
      the weights are all ones, the plain sum of the task gradients.
      ``"mean"`` divides by T (Pytorch-PCGrad's default).
    - **The** :math:`\epsilon` **of the denominator.** The references add a fixed
      ``1e-8`` to :math:`\|g_j\|^2` in absolute units, which makes the result
      depend on the scale of the gradients. Here the Gramian is first divided
      by its largest diagonal entry, so :math:`\epsilon` (default ``1e-8``) is
      relative to the largest squared gradient norm: the weights do not change
      when all gradients are scaled by the same factor, and a zero gradient
      never divides by zero. Projections on tasks whose squared norm is below
      about :math:`\epsilon` times the largest are damped accordingly.
    - Weights multiply the raw task gradients (and losses); they do not sum to
      a constant.

    Properties: for T = 2 the visiting order does not matter, so the weights
    do not depend on the key, and the projected pairs no longer conflict,
    :math:`\langle pc_1, g_2\rangle \ge 0` and :math:`\langle pc_2, g_1\rangle
    \ge 0` (up to the relative :math:`\epsilon`). For a fixed key the
    direction is linear under positive per-task scaling
    :math:`g_i \to a_i g_i` (the coefficient of a projection does not depend
    on the norm of :math:`g_j`); for T > 2 it depends on the key, and only
    the last projection of each :math:`pc_i` is guaranteed to leave no
    conflict.

    Reference: Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery
    for Multi-Task Learning", NeurIPS 2020.

    Args:
      reduction: ``"sum"`` (default) or ``"mean"`` of the projected gradients.
      eps: non-negative constant added to the squared norm of :math:`g_j` in
        the projection, relative to the largest squared gradient norm.

    Returns:
      A stateless, stochastic :class:`mtopt.Weighting` with
      ``needs=Needs.GRAMIAN``; ``update`` requires ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mtopt import pcgrad
      >>> jac = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> method = pcgrad()
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T,
      ...                      key=jax.random.key(0))
      >>> [round(float(x), 4) for x in w]
      [2.0, 1.5]
      >>> [round(float(x), 4) for x in w @ jac]   # pc_1 = (0.5, 0.5), pc_2 = (0, 1)
      [0.5, 1.5]
    """
    opts = _options(reduction, eps)
    return rule.as_method(
        lambda g, losses, preference, key: pcgrad_weights(g, key, **opts),
        name="pcgrad", solver=False, stochastic=True,
    )
