"""Suite-wide settings: strict dtype and rank promotion catch silent broadcasting
of (T,) weights against (T, ...) gradients, as in equinox's test suite."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
