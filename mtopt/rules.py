"""Weight rules: each Gramian method's weights as a plain function of the Gramian.

Every function here maps a (T, T) Gramian ``G = J J^T`` of the task
gradients (and, where the method reads them, the losses, a preference vector
or a PRNG key) to ``(weights, solver_info)``: the (T,) weights on the raw
task gradients, so that the combined direction is ``weights @ J``, and a
:class:`mtopt.SolverInfo` (iterations and accuracy certificate of the
method's solver; 0 iterations and converged for closed forms). They carry no
state, check their inputs, and run eagerly, under ``jax.jit`` and under
``jax.vmap`` (a batch of Gramians at once).

Each stateless Gramian method's ``update`` is its rule wrapped by one shared
adapter, :func:`as_method`, which also makes a method of a rule of your own;
Nash-MTL's ``update`` adds its clip and update schedule to
:func:`nash_mtl_weights`. :func:`min_norm_simplex` is the min-norm point of the
convex hull (MGDA's core, with its certificate).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from mtopt import rules
  >>> jac = jnp.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
  >>> w, info = rules.upgrad_weights(jac @ jac.T)
  >>> bool(jnp.all(jac @ (w @ jac) >= 0)), bool(info.converged)   # non-conflicting
  (True, True)
  >>> grams = jax.random.normal(jax.random.key(0), (8, 3, 5))
  >>> w, info = jax.vmap(rules.mgda_weights)(grams @ grams.transpose(0, 2, 1))
  >>> w.shape, info.converged.shape
  ((8, 3), (8,))
"""

from mtopt._src.methods.aligned_mtl import aligned_mtl_weights
from mtopt._src.methods.cagrad import cagrad_weights
from mtopt._src.methods.config_method import config_weights
from mtopt._src.methods.dualproj import dualproj_weights
from mtopt._src.methods.epo import epo_weights
from mtopt._src.methods.fairgrad import fairgrad_weights
from mtopt._src.methods.imtl import imtl_g_weights
from mtopt._src.methods.mgda import gradient_normalizers, mgda_weights
from mtopt._src.methods.nash_mtl import nash_mtl_weights
from mtopt._src.methods.pcgrad import pcgrad_weights
from mtopt._src.methods.upgrad import upgrad_weights
from mtopt._src.min_norm import min_norm_simplex
from mtopt._src.rule import as_method, visiting_orders

__all__ = (
    "as_method", "aligned_mtl_weights", "cagrad_weights", "config_weights", "dualproj_weights", "epo_weights",
    "fairgrad_weights", "gradient_normalizers", "imtl_g_weights", "mgda_weights",
    "min_norm_simplex", "nash_mtl_weights", "pcgrad_weights", "upgrad_weights",
    "visiting_orders",
)
