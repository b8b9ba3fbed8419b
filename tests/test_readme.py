"""Every ```python block of the README runs, in order, in one namespace."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    import jax

    namespace: dict = {}
    # README code is user code: it runs under JAX's default (standard) promotion,
    # which optax's Adam needs.
    with jax.numpy_dtype_promotion("standard"):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    # The collapse demonstration shows what the README says it shows.

    a = float(jax.nn.sigmoid(namespace["p"]["logit_a"]))
    assert a > 0.99
    losses = namespace["info"].losses
    naive_losses = namespace["two_tasks"](namespace["p"]["theta"])
    assert float(losses[1]) < 0.6 * float(naive_losses[1])
