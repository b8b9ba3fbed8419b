r"""Pareto set learning: one preference-conditioned network for the whole Pareto set."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mtopt._src import base
from mtopt._src import gramian as gramian_lib
from mtopt.pareto._preferences import dirichlet

Array = jax.Array

#: LibMOON's Pareto set model: four hidden layers of 256 ReLU units.
DEFAULT_HIDDEN = (256, 256, 256, 256)


class BoxBound(nnx.Variable):
    """A fixed (not trained) bound of the decision box, stored in a Pareto set model.

    Example:
      >>> import jax.numpy as jnp
      >>> from mtopt import pareto
      >>> bound = pareto.BoxBound(jnp.zeros(2))
      >>> bound[...].tolist()
      [0.0, 0.0]
    """


class PreferenceMLP(nnx.Module):
    r"""A preference-conditioned MLP: preference ``r`` (T,) -> solution ``x`` (n_var,).

    .. math::
        x(r) = \ell + (u - \ell) \odot \sigma\big(\mathrm{MLP}(r)\big)

    with ReLU hidden layers and, when a box ``[ℓ, u]`` is given, a sigmoid rescaled into
    it so every output is feasible (LibMOON's Pareto set model: ``n_obj -> 256 x 4 ->
    n_var``, sigmoid into the bounds); without a box the last layer is linear. The
    preference enters the network as is. The bounds are stored as :class:`BoxBound`
    variables, not parameters: ``nnx.split(model, nnx.Param, ...)`` leaves them out of
    what an optimizer trains.

    Args:
      n_obj: T, the length of a preference vector.
      n_var: the number of decision variables.
      bounds: ``(lower, upper)``, arrays of shape ``(n_var,)`` (or scalars), e.g.
        ``problem.bounds``; ``None`` for an unbounded output.
      hidden: widths of the hidden layers (LibMOON: four of 256).
      rngs: ``nnx.Rngs`` for the initial weights (flax's default initialisers).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from mtopt import pareto
      >>> model = pareto.PreferenceMLP(2, 5, bounds=(0.0, 1.0), hidden=(16,), rngs=nnx.Rngs(0))
      >>> model(jnp.array([0.3, 0.7])).shape, model(jnp.ones((8, 2)) / 2).shape
      ((5,), (8, 5))
    """

    def __init__(
        self,
        n_obj: int,
        n_var: int,
        *,
        bounds: Optional[tuple[Any, Any]] = None,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        rngs: nnx.Rngs,
    ):
        for value, name in ((n_obj, "n_obj"), (n_var, "n_var")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PreferenceMLP: {name} must be a positive int, got {value!r}.")
        hidden = tuple(hidden)
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"PreferenceMLP: hidden must be positive ints, got {hidden!r}.")
        self.n_obj = n_obj
        self.n_var = n_var
        sizes = (n_obj, *hidden, n_var)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
        )
        if bounds is None:
            self.lower = self.upper = None
        else:
            if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
                raise ValueError("PreferenceMLP: bounds must be a pair (lower, upper) or None.")
            lower, upper = (
                jnp.broadcast_to(jnp.asarray(b, jnp.float32), (n_var,)) for b in bounds
            )
            self.lower, self.upper = BoxBound(lower), BoxBound(upper)

    def __call__(self, preference: Array) -> Array:
        """Map preferences ``(T,)`` or ``(B, T)`` to solutions ``(n_var,)`` or ``(B, n_var)``."""
        preference = jnp.asarray(preference)
        if preference.ndim not in (1, 2) or preference.shape[-1] != self.n_obj:
            raise ValueError(
                f"PreferenceMLP: expected a preference of shape ({self.n_obj},) or a batch "
                f"(B, {self.n_obj}), got shape {preference.shape}."
            )
        h = preference.astype(jnp.float32)
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        out = self.layers[-1](h)
        if self.lower is None:
            return out
        lower, upper = self.lower[...], self.upper[...]
        if out.ndim == 2:  # a batch: broadcast the box explicitly (rank promotion may be off)
            lower, upper = lower[None, :], upper[None, :]
        return lower + (upper - lower) * jax.nn.sigmoid(out)


class PSLHistory(NamedTuple):
    """Per-step record of :func:`train_psl`.

    Attributes:
      loss: ``(num_steps,)`` the training loss ``mean_b sum_i w_bi f_i(x_b)``.
      losses: ``(num_steps, T)`` the objectives averaged over the step's preferences.

    Example:
      >>> import jax
      >>> import mtopt
      >>> from mtopt import pareto, problems
      >>> _, history = pareto.train_psl(problems.vlmop2(n_var=2), mtopt.tchebycheff(),
      ...     key=jax.random.key(0), num_steps=5, batch_size=4, hidden=(8,))
      >>> history.loss.shape, history.losses.shape
      ((5,), (5, 2))
    """

    loss: Array
    losses: Array


def _check_problem(problem: Any) -> None:
    for name in ("f", "n_obj", "n_var"):
        if not hasattr(problem, name):
            raise TypeError(
                "train_psl: problem must be an mtopt.problems.Problem (or have f, n_obj, n_var "
                f"and bounds); {type(problem).__name__} has no {name!r}."
            )


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"train_psl: {name} must be an int >= {minimum}, got {value!r}.")
    return value


def default_psl_optimizer() -> optax.GradientTransformation:
    """LibMOON's Pareto set learning optimizer: gradient norm clipped to 1, Adam(1e-3)."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


def train_psl(
    problem: Any,
    method: base.Weighting,
    *,
    key: Array,
    num_steps: int = 1000,
    batch_size: int = 256,
    optimizer: Optional[optax.GradientTransformation] = None,
    model: Optional[nnx.Module] = None,
    alpha: Union[float, Array] = 1.0,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
) -> tuple[nnx.Module, PSLHistory]:
    r"""Train a preference-conditioned model whose outputs trace the Pareto set.

    Pareto set learning (Lin et al., "Pareto set learning for expensive multi-objective
    optimization", NeurIPS 2022; Navon et al., "Learning the Pareto front with
    hypernetworks", ICLR 2021) trains one model :math:`x_\phi(r)` for all preferences at
    once. Every step samples B preferences :math:`r_b \sim \mathrm{Dir}(\alpha)`, maps
    them to solutions :math:`x_b = x_\phi(r_b)`, asks the method for the weights of each
    preference at its own solution, and takes one gradient step on

    .. math::
        \ell(\phi) = \frac{1}{B} \sum_{b=1}^{B} \sum_{i=1}^{T}
            \mathrm{sg}(w_{bi})\, f_i\big(x_\phi(r_b)\big), \qquad
        w_b = \mathrm{method}\big(f(x_b),\ G_b,\ r_b\big),\quad
        G_b = J_b J_b^\top,\ J_b = \frac{\partial f}{\partial x}(x_b),

    with a single backward pass through the model. For the scalarization methods
    (:func:`mtopt.tchebycheff`, :func:`mtopt.smooth_tchebycheff`, :func:`mtopt.pbi`,
    :func:`mtopt.cosmos`, :func:`mtopt.preference_linear`) the weights are
    :math:`\nabla_L s(L; r)`, so the gradient is exactly that of
    :math:`\frac1B \sum_b s(f(x_\phi(r_b)); r_b)`; for Gramian methods (:func:`mtopt.epo`,
    ...) it is their direction at each :math:`x_b`. This follows LibMOON's
    ``BasePSLSolver`` (NeurIPS 2024 Datasets and Benchmarks).

    Conventions pinned:

    - The Gramian (and the Jacobian of Jacobian methods) is that of the objectives with
      respect to the *decision variables* at :math:`x_b` (T x n_var), as in LibMOON, not
      with respect to the model parameters; it costs one small ``jax.jacrev`` per
      preference and only for methods that need it.
    - The sampled preferences are valid by construction (Dirichlet draws); each is
      passed to methods that read one (``method.preference`` not ``"none"``). A method
      that reads none sees only the solution :math:`x_\phi(r_b)`, so its weights do not
      depend on :math:`r_b` and the model has no reason to spread the preferences over
      the front: use a preference method.
    - Preferences are resampled every step, so there is no trajectory per preference
      along which a method state could evolve: every preference sees the method's
      initial state (``method.init(T, x)``). A method whose weights depend on earlier
      steps (``method.stateful``: DWA, uncertainty, FAMO, GradNorm, GradVac, IMTL-L,
      IMTL, MoCo, DB-MTL, ExcessMTL, PMTL, Nash-MTL with ``update_weights_every > 1``)
      would run as another method, so it is refused with an error.
    - Randomness: ``key`` is split into the model's initialisation key and a training key;
      step ``t`` uses ``jax.random.fold_in(training_key, t)``, split into the
      preference key and one key per preference for stochastic methods.
    - Defaults are LibMOON's: Dirichlet(1) preferences, batch 256, four hidden layers of
      256 ReLU units, Adam(1e-3) with the gradient norm clipped to 1, 1000 steps. The
      optimizer step runs under standard dtype promotion (``optax.adam`` works under
      strict promotion).
    - The whole training is one ``jax.jit``-compiled ``lax.scan``.

    Args:
      problem: a :class:`mtopt.problems.Problem` (``f``, ``n_obj``, ``n_var``,
        ``bounds``; ``bounds=None`` is allowed for an unbounded problem).
      method: any :class:`mtopt.Weighting` whose direction is a weighting (no custom
        ``combine``); preference methods read each sampled :math:`r_b`.
      key: PRNG key.
      num_steps: gradient steps, at least 1.
      batch_size: preferences sampled per step, B.
      optimizer: an optax ``GradientTransformation``; ``None`` for LibMOON's
        (``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``).
      model: the model to start from, any ``nnx.Module`` mapping a ``(B, T)`` batch of
        preferences to ``(B, n_var)`` solutions (it is not modified); ``None`` for a new
        :class:`PreferenceMLP` with ``hidden`` layers in the problem's box.
      alpha: Dirichlet concentration, a scalar or shape ``(T,)``.
      hidden: hidden widths of the new :class:`PreferenceMLP` (ignored with ``model``).

    Returns:
      ``(model, history)``: the trained model (``model(r)`` maps any preference ``(T,)``
      or batch ``(B, T)`` to solutions) and a :class:`PSLHistory`.

    Raises:
      TypeError: for a problem without ``f``/``n_obj``/``n_var`` or a method that is not
        an :class:`mtopt.Weighting`.
      ValueError: for a method with its own ``combine`` (GradDrop, MoCo) or one that
        needs ``after_step`` or ``end_epoch`` calls (``famo(lagged=False)``,
        ``dwa(steps_per_epoch="manual")``), bad counts, a
        missing key, or a model whose output is not ``(B, n_var)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import mtopt
      >>> from mtopt import pareto, problems
      >>> vlmop2 = problems.vlmop2(n_var=2)
      >>> model, history = pareto.train_psl(vlmop2, mtopt.tchebycheff(),
      ...     key=jax.random.key(0), num_steps=200, batch_size=32, hidden=(32, 32))
      >>> history.loss.shape
      (200,)
      >>> prefs = pareto.uniform_preferences(5, margin=0.1)
      >>> jax.vmap(vlmop2.f)(model(prefs)).shape
      (5, 2)
    """
    _check_problem(problem)
    base.check_weighting(method, "train_psl", "mtopt.tchebycheff()")
    if method.combine is not None:
        raise ValueError(
            f"train_psl: {method.name} builds its own direction (combine) instead of weighting "
            "the objectives; Pareto set learning needs a weighting method."
        )
    if key is None:
        raise ValueError("train_psl: pass key=jax.random.key(seed).")
    _check_int(num_steps, "num_steps", 1)
    _check_int(batch_size, "batch_size", 1)
    num_tasks, n_var = problem.n_obj, problem.n_var
    bounds = getattr(problem, "bounds", None)
    optimizer = default_psl_optimizer() if optimizer is None else optimizer
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "train_psl: optimizer must be an optax GradientTransformation, got "
            f"{type(optimizer).__name__}."
        )
    init_key, train_key = jax.random.split(key)
    if model is None:
        model = PreferenceMLP(
            num_tasks, n_var, bounds=bounds, hidden=hidden, rngs=nnx.Rngs(params=init_key)
        )
    if not isinstance(model, nnx.Module):
        raise TypeError(f"train_psl: model must be an nnx.Module, got {type(model).__name__}.")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Check the model and the alpha argument once, outside the compiled loop.
    probe = jnp.full((batch_size, num_tasks), 1.0 / num_tasks, jnp.float32)
    out = jax.eval_shape(lambda p: nnx.merge(graphdef, p, rest)(probe), params)
    if out.shape != (batch_size, n_var):
        raise ValueError(
            f"train_psl: the model maps a ({batch_size}, {num_tasks}) batch of preferences to "
            f"shape {out.shape}, expected ({batch_size}, {n_var})."
        )
    dirichlet(train_key, alpha, 1, num_tasks)
    base.check_driver_can_run(method, "train_psl", after_step=False, epochs=False,
                              history=False)
    method_state = method.init(num_tasks, jnp.zeros((n_var,), jnp.float32))
    needs = method.needs
    # Only methods that read a preference get one (passing one to any other method is
    # an error of the protocol: it would be ignored).
    reads_preference = method.preference != "none"

    def weights_of(x: Array, f: Array, r: Array, k: Array) -> Array:
        gram = jac = None
        if needs is not base.Needs.LOSSES:
            jac = jax.jacrev(problem.f)(x)
            gram = gramian_lib.gramian(jac)
        w, _ = method.update(
            method_state,
            f,
            gramian=gram,
            jacobian=jac if needs is base.Needs.JACOBIAN else None,
            key=k,
            preference=r if reads_preference else None,
        )
        return jnp.asarray(w).astype(f.dtype)

    def loss_fn(p, prefs: Array, keys: Array) -> tuple[Array, Array]:
        x = nnx.merge(graphdef, p, rest)(prefs)
        f = jax.vmap(problem.f)(x)
        sg_x, sg_f = jax.lax.stop_gradient(x), jax.lax.stop_gradient(f)
        w = jax.lax.stop_gradient(jax.vmap(weights_of)(sg_x, sg_f, prefs, keys))
        return jnp.mean(jnp.sum(w * f, axis=1)), jnp.mean(sg_f, axis=0)

    def one_step(carry, t):
        p, opt_state = carry
        pref_key, method_key = jax.random.split(jax.random.fold_in(train_key, t))
        prefs = dirichlet(pref_key, alpha, batch_size, num_tasks)
        keys = jax.random.split(method_key, batch_size)
        (loss, mean_f), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, prefs, keys)
        new_p, opt_state = base.optax_step(optimizer, grads, opt_state, p)
        new_p = jax.tree.map(lambda a, b: a.astype(b.dtype), new_p, p)
        return (new_p, opt_state), (loss, mean_f)

    @jax.jit
    def train(p):
        steps = jnp.arange(num_steps, dtype=jnp.int32)
        (p, _), (loss, mean_f) = jax.lax.scan(one_step, (p, optimizer.init(p)), steps)
        return p, loss, mean_f

    params, loss, mean_f = train(params)
    return nnx.merge(graphdef, params, rest), PSLHistory(loss=loss, losses=mean_f)
