"""LibMOON's least-squares "regression" problem (after Hu et al., NeurIPS 2023)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mtopt.problems._problem import (
    Problem,
    as_array,
    box,
    check_dimension,
    check_n_points,
    check_x,
)

Array = jax.Array

_N_SAMPLES = 40
_N_FEATURES = 5


def regression_data(n_obj: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The fixed data set: ``X ~ U(0, 1)^(40 x 5)``, ``Y ~ U(0, 1)^(40 x n_obj)``, float32.

    Drawn as LibMOON does, ``np.random.seed(0)`` then ``rand(40, 5)`` and
    ``rand(40, n_obj)`` (here from a private ``np.random.RandomState(0)``, the same
    stream, without touching NumPy's global state), then cast to float32 as LibMOON's
    ``torch.Tensor`` does.

    Example:
      >>> from mtopt import problems
      >>> x, y = problems.regression_data(n_obj=2)
      >>> x.shape, y.shape, x.dtype
      ((40, 5), (40, 2), dtype('float32'))
    """
    rng = np.random.RandomState(0)
    features = rng.rand(_N_SAMPLES, _N_FEATURES).astype(np.float32)
    targets = rng.rand(_N_SAMPLES, n_obj).astype(np.float32)
    return features, targets


def _front(features: np.ndarray, targets: np.ndarray, width: int, n_points: int) -> np.ndarray:
    x = features.astype(np.float64)
    y = targets.astype(np.float64)
    total = np.sum(y * y, axis=0)
    n_obj = y.shape[1]
    if width >= n_obj:
        # W can hold every task's least-squares coefficients: one point, the ideal point.
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        ideal = total - np.sum(y * (x @ coef), axis=0)
        return np.tile(ideal, (n_points, 1))
    if width != 1 or n_obj != 2:
        raise NotImplementedError(
            "The true front of the regression problem is implemented for n_var = 5 with "
            f"n_obj = 2 (an arc) and for n_var // 5 >= n_obj (a point), not for "
            f"n_var = {5 * width}, n_obj = {n_obj}."
        )
    # With z = X w, loss_k = |y_k|^2 - (y_k . z)^2 / |z|^2. Whitening v = S^(1/2) w with
    # S = X^T X gives loss_k = |y_k|^2 - (v . b_k)^2 / |v|^2, b_k = S^(-1/2) X^T y_k: the
    # optimal unit v sweep the arc between b_1 and b_2.
    eigval, eigvec = np.linalg.eigh(x.T @ x)
    b = (eigvec / np.sqrt(eigval)) @ eigvec.T @ (x.T @ y)
    norms = np.linalg.norm(b, axis=0)
    angle = np.arccos(np.clip(abs(b[:, 0] @ b[:, 1]) / (norms[0] * norms[1]), 0.0, 1.0))
    theta = np.linspace(0.0, angle, n_points)
    explained = np.stack(
        [norms[0] ** 2 * np.cos(theta) ** 2, norms[1] ** 2 * np.cos(angle - theta) ** 2], 1
    )
    return total - explained


def regression(n_var: int = 5, n_obj: int = 2) -> Problem:
    r"""Multi-task least squares with a shared linear representation (LibMOON "regression").

    Fixed data ``X`` (40 x 5) and ``Y`` (40 x ``n_obj``) from :func:`regression_data`.
    The decision vector is reshaped (row-major) to ``W`` of shape ``(5, q)``,
    ``q = n_var / 5``; with ``Z = X W`` and ``P = Z (Z^T Z)^+ Z^T`` the projection onto
    its columns, task ``k`` fits ``y_k`` by least squares on ``Z``:

    .. math::
        f_k(W) = y_k^\top y_k - y_k^\top P\, y_k = \min_{c} \lVert y_k - Z c \rVert^2 .

    The objectives depend only on the column space of ``W`` (``f(aW) = f(W)``) and are
    not convex in ``W``.

    True front (computed in float64 from the float32 data):

    - ``n_var = 5`` (``q = 1``), ``n_obj = 2``: an arc. Whitening ``v = (X^T X)^{1/2} w``
      turns the explained variances into ``(v \cdot b_k)^2 / |v|^2`` with
      ``b_k = (X^T X)^{-1/2} X^T y_k``; the optimal directions sweep the plane arc from
      ``b_1`` to ``b_2``, and ``pareto_front(n)`` samples it at evenly spaced angles
      (from task 1's optimum to task 2's).
    - ``q >= n_obj``: a single point (``W`` can contain every task's least-squares
      coefficients), repeated ``n`` times.
    - other sizes raise ``NotImplementedError``.

    Conventions pinned: LibMOON's defaults ``n_var = 5`` and its data; HV reference point
    (8, 8) for two objectives (LibMOON's ``get_hv_ref``; ``8 * ones`` otherwise). Bounds
    ``[-1, 1]^n`` instead of LibMOON's ``[0, 1]^n``: the objectives are scale-invariant,
    so ``[-1, 1]^n`` contains every direction and the true front above is reachable,
    while with this data the least-squares coefficients of both tasks have a negative
    entry, so LibMOON's box cuts off both ends of the front.

    Reference: Hu, Xian, Xu, Zhao, "Revisiting scalarization in multi-task learning: a
    theoretical perspective", NeurIPS 2023; Zhang et al., "LibMOON: a gradient-based
    multiobjective optimization library in PyTorch", NeurIPS 2024.

    Args:
      n_var: number of variables, a positive multiple of 5.
      n_obj: number of tasks, at least 1.

    Returns:
      The :class:`Problem`.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import problems
      >>> p = problems.regression()
      >>> p.f(jnp.ones(5)).shape
      (2,)
    """
    check_dimension(n_var, "n_var", _N_FEATURES)
    check_dimension(n_obj, "n_obj", 1)
    if n_var % _N_FEATURES:
        raise ValueError(f"n_var must be a multiple of {_N_FEATURES}, got {n_var}.")
    width = n_var // _N_FEATURES
    features, targets = regression_data(n_obj)
    name = "regression"

    def f(x: Array) -> Array:
        x = check_x(x, n_var, name)
        data_x = jnp.asarray(features).astype(x.dtype)
        data_y = jnp.asarray(targets).astype(x.dtype)
        z = data_x @ x.reshape(_N_FEATURES, width)
        z_dot_y = z.T @ data_y
        explained = jnp.sum(z_dot_y * (jnp.linalg.pinv(z.T @ z) @ z_dot_y), axis=0)
        return jnp.sum(data_y * data_y, axis=0) - explained

    def front(n_points: int) -> Array:
        return as_array(_front(features, targets, width, check_n_points(n_points)))

    return Problem(
        name=name,
        n_var=n_var,
        n_obj=n_obj,
        bounds=box(-1.0, 1.0, n_var),
        f=f,
        pareto_front=front,
        ref_point=as_array(np.full(n_obj, 8.0)),
    )
