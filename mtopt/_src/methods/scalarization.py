r"""Preference-driven scalarizations: one weighting per scalarization function.

A scalarization ``s(L; r)`` turns the task losses ``L`` (shape (T,)) and a
preference vector ``r`` on the simplex into one number; minimising it for
different ``r`` reaches different points of the Pareto front. As a weighting,
each returns the gradient of its scalarization with respect to the losses,

.. math::
    w = \nabla_L\, s(L; r) \big|_{L = \mathrm{stop\_gradient}(L)},

so the combined gradient ``sum_i w_i grad L_i`` is exactly ``grad s(L(θ); r)``.
The preference is an input of ``update`` (``preference=``), so one compiled
step serves every ``r`` and ``jax.vmap`` over a batch of preferences trains a
whole front at once.

The preference must lie on the simplex (:func:`check_preference`): known
values are checked when ``update`` runs, and an invalid traced one (under
``jit``/``vmap``) gives NaN weights, so the step's ``nan_policy`` applies.

The scalarization functions themselves (``scalarize_*``) are public too; they
are what each weighting differentiates.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mtopt._src import base, options

Array = jax.Array

#: Largest allowed ``|sum(r) - 1|`` of a preference vector (checked eagerly for
#: known values; under ``jit`` a preference further off gives NaN weights).
PREFERENCE_ATOL = 1e-3


def preference_problem(values: np.ndarray, atol: float = PREFERENCE_ATOL) -> Optional[str]:
    """Why the concrete preference ``values`` (shape (T,)) is not a valid one, or ``None``.

    Valid: every entry finite and non-negative, and ``|sum - 1| <= atol``. The
    same rule as the traced check of :func:`check_preference`; used by the
    drivers (``pareto.sweep``, the runner, the CLI) to name the bad row.

    Example:
      >>> import numpy as np
      >>> from mtopt._src.methods.scalarization import preference_problem
      >>> preference_problem(np.array([0.3, 0.7])) is None
      True
      >>> preference_problem(np.array([0.3, 0.3]))
      'the preference must sum to 1 (on the simplex), got sum 0.6 for [0.3 0.3] (tolerance 0.001)'
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        return f"the preference must be finite and non-negative, got {values}"
    if abs(values.sum() - 1.0) > atol:
        return (f"the preference must sum to 1 (on the simplex), got sum {values.sum():.6g} "
                f"for {values} (tolerance {atol:g})")
    return None


def check_preference(preference: Optional[Array], num_tasks: int, method: str) -> Array:
    r"""Validate a preference vector and return it, in float32/float64, on the simplex.

    A valid preference has shape ``(T,)``, finite non-negative entries and
    :math:`|\sum_i r_i - 1| \le` :data:`PREFERENCE_ATOL`. The shape is checked at
    trace time. When the values are known (a concrete array, not a
    ``jit``/``vmap`` tracer) they are checked too and a bad one raises
    ``ValueError``.

    Traced values are checked inside the computation: a valid preference is
    returned divided by its sum (a change of at most ``PREFERENCE_ATOL``), an
    invalid one (a negative or non-finite entry, or a sum off 1 by more than
    ``PREFERENCE_ATOL``) comes back as a vector of **NaN**, never silently
    repaired. Every method that calls this function returns NaN weights for it,
    so the training step's ``nan_policy`` decides what happens: ``"propagate"``
    shows NaN gradients, ``"skip"`` skips the step, ``"raise"`` raises.

    Args:
      preference: the preference vector ``r``, shape (T,).
      num_tasks: T, the number of task losses.
      method: the method name, for error messages.

    Returns:
      ``r`` as a (T,) float array on the simplex, or all NaN (traced and invalid).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from mtopt._src.methods.scalarization import check_preference
      >>> check_preference(jnp.array([0.25, 0.75]), 2, "demo").tolist()
      [0.25, 0.75]
      >>> jax.jit(lambda r: check_preference(r, 2, "demo"))(jnp.array([0.3, 0.3])).tolist()
      [nan, nan]
    """
    if preference is None:
        raise ValueError(
            f"{method} needs a preference vector: pass preference=r to update, an array "
            f"of shape ({num_tasks},) with non-negative entries summing to 1."
        )
    preference = jnp.asarray(preference)
    if preference.shape != (num_tasks,):
        raise ValueError(
            f"{method}: expected a preference vector of shape ({num_tasks},) for "
            f"{num_tasks} task losses, got shape {preference.shape}."
        )
    if not (
        jnp.issubdtype(preference.dtype, jnp.floating)
        or jnp.issubdtype(preference.dtype, jnp.integer)
    ):
        raise TypeError(f"{method}: preference must be a real array, got {preference.dtype}.")
    try:
        values = np.asarray(preference, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        values = None
    if values is not None:
        problem = preference_problem(values)
        if problem is not None:
            raise ValueError(f"{method}: {problem}.")
    dtype = base.compute_dtype(preference)
    r = preference.astype(dtype)
    total = jnp.sum(r)
    valid = (
        jnp.all(jnp.isfinite(r))
        & jnp.all(r >= 0)
        & (jnp.abs(total - 1.0) <= PREFERENCE_ATOL)
    )
    return jnp.where(valid, r / jnp.where(valid, total, 1.0), jnp.full_like(r, jnp.nan))


def nan_unless_valid(weights: Array, preference: Array) -> Array:
    """``weights``, or NaN everywhere when :func:`check_preference` rejected the
    (traced) preference, so no method can turn an invalid preference into numbers.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt._src.methods.scalarization import nan_unless_valid
      >>> nan_unless_valid(jnp.ones(2), jnp.array([jnp.nan, jnp.nan])).tolist()
      [nan, nan]
    """
    ok = jnp.all(jnp.isfinite(preference))
    return jnp.where(ok, weights, jnp.full_like(weights, jnp.nan))


def _ideal_option(ideal: Optional[Array], method: str) -> Optional[Array]:
    """Check the factory's ``ideal=`` option: a vector, finite when its values are known."""
    if ideal is None:
        return None
    ideal = jnp.asarray(ideal)
    if ideal.ndim != 1 or not (
        jnp.issubdtype(ideal.dtype, jnp.floating) or jnp.issubdtype(ideal.dtype, jnp.integer)
    ):
        raise ValueError(
            f"{method}: ideal must be a real vector of shape (T,), got shape {ideal.shape} "
            f"and dtype {ideal.dtype}."
        )
    base.check_concrete_vector(ideal, method, "ideal")
    return ideal


def _check_ideal(ideal: Optional[Array], num_tasks: int, dtype, method: str) -> Array:
    """The ideal (reference) point ``z`` as a (T,) array; ``None`` means 0."""
    if ideal is None:
        return jnp.zeros((num_tasks,), dtype)
    ideal = jnp.asarray(ideal)
    if ideal.shape != (num_tasks,):
        raise ValueError(
            f"{method}: expected an ideal point of shape ({num_tasks},) for {num_tasks} "
            f"task losses, got shape {ideal.shape}."
        )
    return ideal.astype(dtype)


def _safe_norm(v: Array) -> Array:
    """Euclidean norm that is 0 with a zero gradient at ``v = 0`` and does not
    overflow for large entries (it rescales by the largest magnitude)."""
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(v)))
    nonzero = scale > 0
    scaled = v / jnp.where(nonzero, scale, 1.0)
    sq = jnp.sum(scaled * scaled)
    return jnp.where(nonzero, scale * jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _unit(r: Array) -> Array:
    """``r / ||r||``; the guarded preferences are never zero."""
    return r / _safe_norm(r)


def scalarize_linear(losses: Array, preference: Array) -> Array:
    r"""Linear scalarization ``sum_i r_i L_i``."""
    return jnp.sum(preference * losses)


def scalarize_tchebycheff(
    losses: Array, preference: Array, ideal: Optional[Array] = None
) -> Array:
    r"""Weighted Tchebycheff ``max_i r_i (L_i - z_i)`` (``z = 0`` by default)."""
    z = jnp.zeros_like(losses) if ideal is None else ideal
    return jnp.max(preference * (losses - z))


def scalarize_smooth_tchebycheff(
    losses: Array, preference: Array, mu: float = 0.1, ideal: Optional[Array] = None
) -> Array:
    r"""Smooth Tchebycheff ``mu * logsumexp(r_i (L_i - z_i) / mu)``."""
    z = jnp.zeros_like(losses) if ideal is None else ideal
    return mu * jax.nn.logsumexp(preference * (losses - z) / mu)


def scalarize_pbi(
    losses: Array, preference: Array, theta: float = 1.0, ideal: Optional[Array] = None
) -> Array:
    r"""Penalty boundary intersection ``d_1 + theta d_2`` along ``r / ||r||``."""
    z = jnp.zeros_like(losses) if ideal is None else ideal
    direction = _unit(preference)
    shifted = losses - z
    d1 = jnp.sum(shifted * direction)
    off_ray = shifted - d1 * direction
    # Within rounding of the ray the off-ray part is noise whose direction would
    # decide the weights: treat it as exactly 0 (the zero subgradient of the norm).
    on_ray = _safe_norm(off_ray) <= 100 * jnp.finfo(off_ray.dtype).eps * _safe_norm(shifted)
    d2 = _safe_norm(jnp.where(on_ray, 0.0, off_ray))
    return d1 + theta * d2


def scalarize_cosmos(losses: Array, preference: Array, lam: float = 8.0) -> Array:
    r"""COSMOS ``<L, r/||r||> - lam * cos(L, r)``."""
    direction = _unit(preference)
    d1 = jnp.sum(losses * direction)
    norm = _safe_norm(losses)
    cos = jnp.where(norm > 0, d1 / jnp.where(norm > 0, norm, 1.0), 0.0)
    return d1 - lam * cos


def _scalarization_weighting(
    name: str, scalarize: Callable[[Array, Array], Array], ideal: Optional[Array] = None
) -> base.Weighting:
    """A stateless, loss-only weighting whose weights are ``grad scalarize``.

    ``scalarize(losses, preference, ideal)`` is differentiated with respect to
    ``losses`` at the (stop-gradiented) current losses. An invalid traced
    preference gives NaN weights (see :func:`check_preference`).
    """
    ideal = _ideal_option(ideal, name)

    def update(state, losses, *, gramian=None, jacobian=None, key=None, preference=None):
        del gramian, jacobian, key
        losses = base.check_losses(losses)
        num_tasks = losses.shape[0]
        base.check_state(state, num_tasks, name, base.EmptyState)
        r = check_preference(preference, num_tasks, name)
        dtype = base.compute_dtype(losses, r)
        z = _check_ideal(ideal, num_tasks, dtype, name)
        point = jax.lax.stop_gradient(losses.astype(dtype))
        weights = jax.grad(scalarize)(point, r.astype(dtype), z)
        return jax.lax.stop_gradient(nan_unless_valid(weights, r)), state

    return base.Weighting(
        init=base.init_empty_state, update=update, needs=base.Needs.LOSSES, name=name,
        preference="required", positional=ideal is not None,
    )


def preference_linear() -> base.Weighting:
    r"""Linear scalarization with a preference vector: ``w = r``.

    .. math::
        s(L; r) = \sum_i r_i L_i, \qquad w = \nabla_L s = r.

    The weights are the preference itself, so they sum to 1. Linear
    scalarization reaches only the *convex* part of a Pareto front: on a
    non-convex front many preferences land on the same end points.

    Reference: the weighted-sum method; as a preference baseline ("LS") in
    Zhang et al., "LibMOON: A Gradient-based MultiObjective OptimizatioN
    Library in PyTorch", NeurIPS 2024 (Datasets and Benchmarks).

    Conventions pinned: weights sum to 1 (they are ``r``); they multiply the
    raw task gradients. No ideal point: ``sum_i r_i (L_i - z_i)`` has the same
    gradient for every ``z``. The preference is validated by
    :func:`check_preference` (known values raise; an invalid traced one gives
    NaN weights).

    Returns:
      A loss-only, stateless :class:`mtopt.Weighting`; ``update``
      requires ``preference=``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import preference_linear
      >>> method = preference_linear()
      >>> state = method.init(2)
      >>> w, _ = method.update(state, jnp.array([3.0, 1.0]), preference=jnp.array([0.25, 0.75]))
      >>> [float(x) for x in w]
      [0.25, 0.75]
    """

    def scalarize(losses, preference, ideal):
        del ideal
        return scalarize_linear(losses, preference)

    return _scalarization_weighting("preference_linear", scalarize)


def tchebycheff(ideal: Optional[Array] = None, *, eps: float = 0.0) -> base.Weighting:
    r"""Weighted Tchebycheff scalarization: all weight on the worst weighted loss.

    .. math::
        s(L; r) = \max_i r_i (L_i - z_i^*), \qquad z^* = z - \varepsilon,

        w_i = \frac{r_i}{|I|}\,[i \in I], \qquad
        I = \arg\max_i r_i (L_i - z_i^*).

    ``w`` is a subgradient of the max: ``r_i`` on the maximising task. Ties
    are split evenly (each of the ``|I|`` tied tasks gets ``r_i / |I|``);
    this is what ``jax.grad(jnp.max)`` returns and is pinned. Every Pareto
    optimal point minimises ``s`` for some ``r`` (unlike linear
    scalarization); the minimiser lies where ``r_i (L_i - z_i^*)`` are equal,
    i.e. ``L - z^*`` proportional to ``1 / r``.

    Reference: Bowman, "On the relationship of the Tchebycheff norm and the
    efficient frontier of multiple-criteria objectives", 1976; as "Tche" in
    LibMOON (Zhang et al., NeurIPS 2024).

    Conventions pinned:
      - Weights sum to ``r_i`` of the active task (at most 1); they multiply
        the raw task gradients.
      - LibMOON's ``tche`` returns the *unweighted* loss ``L_k`` at
        ``k = argmax_i r_i (L_i - z_i)``, whose gradient is the one-hot
        ``e_k``, not ``r_k e_k``; that quirk is **not** reproduced here: the
        weight is the gradient of the weighted max.
      - ``ideal`` (``z``) defaults to 0, as in LibMOON. ``eps`` shifts it to
        the utopia point ``z - eps`` (MOEA/D practice; default 0, LibMOON's).

    Args:
      ideal: the ideal point ``z``, shape (T,), or None for 0.
      eps: utopia offset, ``>= 0``.

    Returns:
      A loss-only, stateless :class:`mtopt.Weighting`; ``update``
      requires ``preference=``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import tchebycheff
      >>> method = tchebycheff()
      >>> w, _ = method.update(method.init(2), jnp.array([1.0, 2.0]),
      ...                      preference=jnp.array([0.5, 0.5]))
      >>> [float(x) for x in w]
      [0.0, 0.5]
    """
    eps = options.real(eps, "eps", "tchebycheff", nonnegative=True)

    def scalarize(losses, preference, z):
        return scalarize_tchebycheff(losses, preference, z - eps)

    return _scalarization_weighting("tchebycheff", scalarize, ideal)


def smooth_tchebycheff(mu: float = 0.1, ideal: Optional[Array] = None) -> base.Weighting:
    r"""Smooth Tchebycheff (STCH): a log-sum-exp smoothing of the Tchebycheff max.

    .. math::
        s_\mu(L; r) = \mu \log \sum_i \exp\!\Big(\frac{r_i (L_i - z_i)}{\mu}\Big),
        \qquad
        w_i = r_i\, \mathrm{softmax}\!\Big(\frac{r (L - z)}{\mu}\Big)_i .

    ``max_i r_i(L_i - z_i) <= s_mu <= max_i r_i(L_i - z_i) + mu log T``, and as
    ``mu -> 0`` the weights tend to the Tchebycheff subgradient ``r_k e_k``.

    Reference: Lin, Zhang, Yang, Zhang, Zhang, "Smooth Tchebycheff
    Scalarization for Multi-Objective Optimization", ICML 2024.

    Conventions pinned:
      - The preference form above with ``mu = 0.1`` and ``z = 0``: LibMOON's
        ``soft_tche`` (``μ·logsumexp(w(f−z)/μ)``, default μ = 0.1).
      - LibMTL's ``STCH`` weighting is a different function, not reproduced
        here: no preference, ``T·μ·logsumexp(log(L/nadir)/μ)`` on log losses
        normalised by a nadir (the mean loss of a warm-up epoch), after
        ``STCH_warmup_epoch = 4`` epochs of ``sum_i log L_i``, with
        ``STCH_mu = 1.0``.
      - Weights are positive and sum to ``sum_i r_i softmax_i <= 1``; they
        multiply the raw task gradients.

    Args:
      mu: smoothing parameter, ``> 0``.
      ideal: the ideal point ``z``, shape (T,), or None for 0.

    Returns:
      A loss-only, stateless :class:`mtopt.Weighting`; ``update``
      requires ``preference=``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import smooth_tchebycheff
      >>> method = smooth_tchebycheff(mu=0.01)
      >>> w, _ = method.update(method.init(2), jnp.array([1.0, 2.0]),
      ...                      preference=jnp.array([0.5, 0.5]))
      >>> [round(float(x), 4) for x in w]
      [0.0, 0.5]
    """
    mu = options.real(mu, "mu", "stch", positive=True)

    def scalarize(losses, preference, z):
        return scalarize_smooth_tchebycheff(losses, preference, mu, z)

    return _scalarization_weighting("stch", scalarize, ideal)


def pbi(theta: float = 1.0, ideal: Optional[Array] = None) -> base.Weighting:
    r"""Penalty-based boundary intersection (PBI).

    With ``u = r / ||r||``:

    .. math::
        d_1 = \langle L - z, u\rangle, \qquad
        d_2 = \| L - z - d_1 u \|, \qquad
        s(L; r) = d_1 + \theta d_2,

        w = u + \theta\, \frac{P (L - z)}{\|P (L - z)\|}, \qquad P = I - u u^\top .

    ``d_1`` is the progress along the preference ray, ``d_2`` the distance
    from it. On the ray (``d_2 = 0``) the norm is not differentiable; the
    weights are then ``u`` (the zero subgradient of ``d_2``), never NaN. So
    that rounding noise does not pick the direction, ``d_2`` is taken as 0
    when it is below ``100`` machine epsilons times ``||L - z||``.
    Weights can be negative: they push the losses back towards the ray.

    Reference: Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm
    Based on Decomposition", IEEE TEVC 2007; as "PBI" in LibMOON (Zhang et
    al., NeurIPS 2024).

    Conventions pinned: ``theta = 1`` (LibMOON's ``pbi`` default; MOEA/D papers
    often use 5, as LibMOON's PBI metric does). ``ideal`` defaults to 0 (LibMOON
    ignores ``z`` in PBI, which equals ``z = 0``). Weights multiply the raw
    task gradients and are invariant to a positive rescaling of ``L - z``.

    Args:
      theta: penalty on the distance to the ray, ``>= 0``.
      ideal: the ideal point ``z``, shape (T,), or None for 0.

    Returns:
      A loss-only, stateless :class:`mtopt.Weighting`; ``update``
      requires ``preference=``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pbi
      >>> method = pbi(theta=2.0)
      >>> w, _ = method.update(method.init(2), jnp.array([1.0, 0.0]),
      ...                      preference=jnp.array([0.5, 0.5]))
      >>> [round(float(x), 4) for x in w]
      [2.1213, -0.7071]
    """
    theta = options.real(theta, "theta", "pbi", nonnegative=True)

    def scalarize(losses, preference, z):
        return scalarize_pbi(losses, preference, theta, z)

    return _scalarization_weighting("pbi", scalarize, ideal)


def cosmos(lam: float = 8.0) -> base.Weighting:
    r"""COSMOS: a linear term rewarded for pointing the losses along the preference.

    With ``u = r / ||r||``:

    .. math::
        s(L; r) = \langle L, u\rangle - \lambda \cos(L, r), \qquad
        \cos(L, r) = \frac{\langle L, u\rangle}{\|L\|},

        w = u - \frac{\lambda}{\|L\|}\Big(u - \cos(L, r)\,\frac{L}{\|L\|}\Big).

    At ``L = 0`` the cosine is taken as 0 with a zero gradient (weights
    ``u``), never NaN. Weights can be negative.

    Reference: Ruchte & Grabocka, "Scalable Pareto Front Approximation for
    Deep Multi-Objective Learning", ICDM 2021.

    Conventions pinned: the form and default of LibMOON's ``cosmos``
    aggregation (``d1 − coeff·cos`` with ``d1 = <L, r/||r||>``; ``cosmos_hp =
    8.0`` passed by ``get_agg_func``; the function's own default is 10). The
    paper writes the linear term as ``r^T L``; on the simplex the two differ by
    the factor ``||r||``, which changes the relative strength of ``lambda``. No
    ideal point (neither the paper nor LibMOON uses one). Weights multiply the
    raw task gradients.

    Args:
      lam: strength of the cosine term, ``>= 0``.

    Returns:
      A loss-only, stateless :class:`mtopt.Weighting`; ``update``
      requires ``preference=``.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import cosmos
      >>> method = cosmos(lam=1.0)
      >>> w, _ = method.update(method.init(2), jnp.array([1.0, 1.0]),
      ...                      preference=jnp.array([0.5, 0.5]))
      >>> [round(float(x), 4) for x in w]  # on the ray the cosine term is stationary
      [0.7071, 0.7071]
    """
    lam = options.real(lam, "lam", "cosmos", nonnegative=True)

    def scalarize(losses, preference, ideal):
        del ideal
        return scalarize_cosmos(losses, preference, lam)

    return _scalarization_weighting("cosmos", scalarize)
