r"""GradVac: Gradient Vaccine, with its EMA of target cosines in the method state."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtopt._src import base, options, rule

__all__ = ["GradVacState", "gradvac"]


class GradVacState(NamedTuple):
    """The state of :func:`gradvac`.

    Attributes:
      target_cosines: (T, T) the EMA targets :math:`\\hat\\rho_{ij}` of the cosine
        between the (corrected) gradient of task i and the gradient of task j.
        Row i is read and written only by task i; the diagonal is unused.

    Example:
      >>> import mtopt
      >>> mtopt.gradvac().init(2).target_cosines.tolist()
      [[0.0, 0.0], [0.0, 0.0]]
    """

    target_cosines: base.Array


def gradvac(beta: float = 0.5, *, eps: float = 1e-8) -> base.Weighting:
    r"""Gradient Vaccine: raise the cosine between task gradients to an adaptive target.

    For every task :math:`i`, start from :math:`g'_i = g_i` and visit the other
    tasks :math:`j` in a random order. With :math:`\rho_{ij} = \cos(g'_i, g_j)`
    and the target :math:`\hat\rho_{ij}` kept in the state, whenever
    :math:`\rho_{ij} < \hat\rho_{ij}` add the multiple of :math:`g_j` that makes
    the cosine exactly :math:`\hat\rho_{ij}`:

    .. math::

        g'_i \leftarrow g'_i + \frac{\|g'_i\|\,\big(\hat\rho_{ij}\sqrt{1-\rho_{ij}^2}
            - \rho_{ij}\sqrt{1-\hat\rho_{ij}^2}\big)}
            {\|g_j\|\sqrt{1-\hat\rho_{ij}^2} + \epsilon}\; g_j ,
        \qquad
        \hat\rho_{ij} \leftarrow (1-\beta)\,\hat\rho_{ij} + \beta\,\rho_{ij},

    and the direction is :math:`d = \sum_i g'_i`. As :math:`g'_i = \sum_k c_{ik}
    g_k`, every norm and cosine is read off the Gramian
    (:math:`\|g'_i\|^2 = c_i^\top G c_i`, :math:`\langle g'_i, g_j\rangle =
    (c_i^\top G)_j`), and the weights on the raw gradients are
    :math:`w = \sum_i c_i`. The targets start at 0, so the first step acts like
    PCGrad with a partial projection (it corrects only conflicting pairs).

    Conventions pinned:

    - **Grouping.** Whole-model only (LibMTL ``GradVac_group_type=0``): one
      cosine per task pair over all the parameters the Gramian covers. Per-layer
      grouping would need one Gramian per group.
    - **Order.** Each task :math:`i` draws its own random order of the other
      tasks (LibMTL, TorchJD): row i of ``argsort(jax.random.uniform(key,
      (T, T)), axis=-1)``, a uniform random permutation, skipping :math:`j = i`.
    - **EMA.** :math:`\hat\rho_{ij}` is updated at every visit with the cosine
      measured *before* the correction, as in the paper's Algorithm 1, in
      TorchJD and in LibMTL since its commit d2d84fa ("fix a bug in GradVac",
      2024-02-15; before it, LibMTL updated the target only when a correction
      happened, :math:`\rho_{ij} < \hat\rho_{ij}`, so the targets could only
      decrease from 0).
    - **Epsilon.** The references add a fixed ``1e-8`` to both denominators.
      Here the Gramian is first divided by its largest diagonal entry, so
      :math:`\epsilon` is relative to the largest squared-norm scale and the
      weights do not change when every gradient is scaled by the same factor.
      Cosines are clipped to [-1, 1] against rounding.
    - ``beta`` defaults to 0.5 (LibMTL, TorchJD); the weights multiply the raw
      gradients and do not sum to a constant (all ones when nothing is
      corrected).

    Reference: Wang, Tsvetkov, Firat and Cao, "Gradient Vaccine: Investigating
    and Improving Multi-task Optimization in Massively Multilingual Models",
    ICLR 2021.

    Args:
      beta: EMA rate of the target cosines, in [0, 1].
      eps: non-negative constant of the denominators, relative to the scale
        of the Gramian.

    Returns:
      A stateful, stochastic :class:`mtopt.Weighting` with
      ``needs=Needs.GRAMIAN``; ``update`` requires ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mtopt import gradvac
      >>> jac = jnp.array([[1.0, 0.0], [-1.0, 1.0]])
      >>> method = gradvac()
      >>> state = method.init(2)
      >>> w, state = method.update(state, jnp.ones(2), gramian=jac @ jac.T,
      ...                          key=jax.random.key(0))
      >>> [round(float(x), 4) for x in w]   # targets 0: conflicting parts removed
      [2.0, 1.5]
      >>> [[round(float(x), 4) for x in row] for row in state.target_cosines]
      [[0.0, -0.3536], [-0.3536, 0.0]]
    """
    beta = options.probability(beta, "beta", "gradvac")
    eps = options.real(eps, "eps", "gradvac", nonnegative=True)

    def init(num_tasks: int, params: Optional[base.PyTree] = None) -> GradVacState:
        del params
        base.check_num_tasks(num_tasks)
        return GradVacState(target_cosines=jnp.zeros((num_tasks, num_tasks), base.state_dtype()))

    def vaccinate_one(
        task: base.Array, order: base.Array, targets: base.Array, gram: base.Array
    ) -> tuple[base.Array, base.Array]:
        """Correct one task's gradient; returns its coefficients and its target row."""
        num_tasks = gram.shape[0]
        dtype = gram.dtype
        norms_sq = jnp.maximum(jnp.diagonal(gram), 0.0)

        def visit(position, carry):
            coeffs, row = carry
            j = order[position]
            coeffs_gram = coeffs @ gram
            norm_i = jnp.sqrt(jnp.maximum(jnp.dot(coeffs_gram, coeffs), 0.0))
            norm_j = jnp.sqrt(norms_sq[j])
            cos = jnp.clip(coeffs_gram[j] / (norm_i * norm_j + eps), -1.0, 1.0)
            target = row[j]
            sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 0.0))
            target_sin = jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0))
            scale = norm_i * (target * sin - cos * target_sin) / (norm_j * target_sin + eps)
            other = j != task
            correct = other & (cos < target)
            coeffs = coeffs.at[j].add(jnp.where(correct, scale, 0.0))
            row = row.at[j].set(jnp.where(other, (1.0 - beta) * target + beta * cos, target))
            return coeffs, row

        start = jax.nn.one_hot(task, num_tasks, dtype=dtype)
        return jax.lax.fori_loop(0, num_tasks, visit, (start, targets))

    def update(
        state: GradVacState,
        losses: base.Array,
        *,
        gramian: Optional[base.Array] = None,
        jacobian: Optional[base.PyTree] = None,
        key: Optional[base.Array] = None,
        preference: Optional[base.Array] = None,
    ) -> tuple[base.Array, GradVacState]:
        del jacobian, preference
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, "gradvac", GradVacState)
        base.check_state_tasks(state.target_cosines.shape[0], num_tasks, "gradvac")
        gramian = base.check_gramian(gramian, num_tasks, "gradvac")
        key = base.check_key(key, "gradvac")
        dtype = base.compute_dtype(gramian, losses)
        gram = gramian.astype(dtype)
        gram, _ = rule.unit_diagonal_scale(gram)
        orders = rule.visiting_orders(key, num_tasks)
        targets = state.target_cosines.astype(dtype)
        coeffs, new_targets = jax.vmap(vaccinate_one, in_axes=(0, 0, 0, None))(
            jnp.arange(num_tasks), orders, targets, gram
        )
        new_state = GradVacState(
            target_cosines=new_targets.astype(state.target_cosines.dtype)
        )
        return jnp.sum(coeffs, axis=0), new_state

    return base.Weighting(
        init=init,
        update=update,
        needs=base.Needs.GRAMIAN,
        name="gradvac",
        stochastic=True,
        stateful=True,
    )
