"""Multi-task benchmark tasks that need no download.

Each factory returns a :class:`Task`: train / validation / test splits, a
``flax.nnx`` model with a shared trunk and one head per task, the per-task
training losses and evaluation metrics, and ``is_shared`` to pass as
``mtopt.value_and_grad(..., shared=task.is_shared)``.

- :func:`multidigits`: two-digit images (MultiMNIST protocol) from scikit-learn's 8 x 8 digits;
- :func:`gradnorm_synthetic`: GradNorm's synthetic regression, tasks of very different scales;
- :func:`wine`: cultivar classification (cross-entropy) and alcohol regression (MSE).

``multidigits`` and ``wine`` need scikit-learn (``pip install "mtopt[examples]"``).
"""

from mtopt.tasks._gradnorm import default_sigmas, gradnorm_synthetic
from mtopt.tasks._multidigits import multidigits
from mtopt.tasks._registry import get_task, task_names
from mtopt.tasks._task import Task
from mtopt.tasks._wine import wine

__all__ = (
    "Task",
    "default_sigmas",
    "get_task",
    "gradnorm_synthetic",
    "multidigits",
    "task_names",
    "wine",
)
