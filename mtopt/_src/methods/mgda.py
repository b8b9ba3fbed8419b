"""MGDA: the multiple-gradient descent algorithm (Désidéri 2012; Sener & Koltun 2018)."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from mtopt._src import base, min_norm

Array = jax.Array
Normalization = Literal["none", "l2", "loss", "loss+"]
NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def gradient_normalizers(gramian: Array, losses: Array, normalization: str) -> Array:
    """Sener & Koltun's per-task gradient normalisers ``n_i`` (task i uses ``g_i / n_i``).

    ``"none"``: 1; ``"l2"``: ``||g_i||``; ``"loss"``: ``L_i``; ``"loss+"``:
    ``L_i ||g_i||``. A normaliser that is zero or negative (a zero gradient, a
    non-positive loss) is replaced by 1, so no task is divided by zero.
    """
    dtype = gramian.dtype
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gramian), 0.0))
    losses = losses.astype(dtype)
    if normalization == "none":
        n = jnp.ones_like(norms)
    elif normalization == "l2":
        n = norms
    elif normalization == "loss":
        n = losses
    else:
        n = losses * norms
    usable = (n > 0) & jnp.isfinite(n)
    return jnp.where(usable, n, 1.0)


def mgda(
    normalization: Normalization = "none", *, max_iter: int = 1000, tol: float = 1e-7
) -> base.Weighting:
    r"""MGDA: the min-norm point of the convex hull of the task gradients.

    .. math::
        w'^* = \arg\min_{w' \in \Delta_T} \Big\| \sum_i w'_i \frac{g_i}{n_i} \Big\|^2 ,
        \qquad w_i = \frac{w'^*_i}{n_i},

    where :math:`\Delta_T` is the probability simplex and :math:`n_i` the
    gradient normaliser (:func:`gradient_normalizers`). With
    ``normalization="none"`` the direction :math:`d = \sum_i w_i g_i` is the
    min-norm element of the convex hull: :math:`\langle d, g_i\rangle \ge
    \|d\|^2 \ge 0` for every task (a common descent direction), and
    :math:`d = 0` exactly at Pareto-stationary points. References: Désidéri,
    "Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization", C. R. Math. 2012; Sener & Koltun, "Multi-Task Learning as
    Multi-Objective Optimization", NeurIPS 2018.

    Solver: exact closed form for T = 2 (and T = 1); for T > 2 accelerated
    projected gradient on the simplex with bounded iterations
    (:func:`mtopt.min_norm_simplex`; ``max_iter`` and ``tol`` are its
    bound and stopping tolerance). Only the Gramian is read.

    Conventions pinned:

    - ``info.weights`` are the coefficients on the **raw** gradients and
      losses: :math:`w_i = w'_i / n_i`. They sum to 1 for
      ``normalization="none"``; with a normalisation they do not (the simplex
      weights :math:`w'` do). Nash-MTL's code multiplies the simplex weights by
      T; here they are not (scale the learning rate instead).
    - T = 2 weights are exact, in [0, 1]; Sener & Koltun's and LibMTL's code
      clip them to [0.001, 0.999].
    - LibMTL's default normalisation is ``"none"`` (``mgda_gn``); Sener &
      Koltun's paper uses ``"loss+"``.

    Args:
      normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
      max_iter: iteration bound of the T > 2 solver.
      tol: l1 step size below which the T > 2 solver stops.

    Returns:
      A stateless :class:`mtopt.Weighting` with ``needs=Needs.GRAMIAN``.

    Example:
      >>> import jax.numpy as jnp
      >>> import mtopt
      >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
      >>> method = mtopt.mgda()
      >>> w, _ = method.update(method.init(2), jnp.ones(2), gramian=jac @ jac.T)
      >>> [round(float(x), 4) for x in w], [round(float(x), 4) + 0.0 for x in w @ jac]
      ([0.6, 0.4], [0.0, 1.0, 1.0])
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"mgda: normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"mgda: max_iter must be a positive int, got {max_iter!r}.")

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del jacobian, key, preference
        losses = base.check_losses(losses)
        gramian = base.check_gramian(gramian, losses.shape[0], "mgda")
        g = gramian.astype(base.compute_dtype(gramian))
        n = gradient_normalizers(g, losses, normalization)
        g_normalized = g / (n[:, None] * n[None, :])
        w_simplex = min_norm.min_norm_simplex(g_normalized, max_iter=max_iter, tol=tol)
        return w_simplex / n, state

    return base.Weighting(
        init=base.init_empty_state, update=update, needs=base.Needs.GRAMIAN, name="mgda"
    )
