"""Plots of fronts and optimisation trajectories (matplotlib: ``pip install mtopt[examples]``).

Every function draws on a new :class:`matplotlib.figure.Figure` (or on the ``ax`` it is
given), returns the figure, and writes it to ``path`` when one is given. Figures are
created without ``pyplot``: no window opens, no backend is switched, nothing global is
kept alive; a notebook still displays the returned figure. matplotlib is imported
only when a function is called, so ``import mtopt`` never needs it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mtopt.problems._problem import Problem

__all__ = ["plot_front_2d", "plot_front_3d", "plot_trajectories"]

PointSets = Union[Any, Mapping[str, Any]]

_INSTALL_HINT = (
    "mtopt.plots needs matplotlib, an optional dependency: pip install 'mtopt[examples]' "
    "(or pip install matplotlib)."
)


def _matplotlib() -> Any:
    """Import matplotlib lazily, with an install hint when it is missing."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401  (checks the submodule too)
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return matplotlib


def _new_axes(ax: Any, projection: Optional[str] = None, figsize=(5.0, 4.0)) -> Any:
    """``ax`` itself, or the single axes of a new pyplot-free figure."""
    _matplotlib()
    if ax is not None:
        if projection == "3d" and not hasattr(ax, "zaxis"):
            raise ValueError(
                "plot_front_3d needs 3-D axes, e.g. fig.add_subplot(projection='3d'); "
                f"got {type(ax).__name__}."
            )
        return ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    if projection == "3d":
        from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the projection)

        return fig.add_subplot(projection="3d")
    return fig.add_subplot()


def _finish(ax: Any, path: Optional[Union[str, os.PathLike]], dpi: int) -> Any:
    fig = ax.get_figure()
    if path is not None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _as_points(points: Any, n_obj: int, what: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != n_obj:
        raise ValueError(
            f"{what} must have shape (n_points, {n_obj}), got shape {array.shape}."
        )
    return array


def _point_sets(points: PointSets, n_obj: int) -> dict[Optional[str], np.ndarray]:
    """One unlabelled array, or a ``{label: array}`` mapping, as a dict."""
    if isinstance(points, Mapping):
        if not points:
            raise ValueError("points is an empty mapping; give at least one point set.")
        return {str(k): _as_points(v, n_obj, f"points[{k!r}]") for k, v in points.items()}
    return {None: _as_points(points, n_obj, "points")}


def _break_at_gaps(front: np.ndarray, factor: float = 10.0) -> np.ndarray:
    """Insert a NaN row between neighbours much farther apart than the median spacing."""
    if front.shape[0] < 3:
        return front
    steps = np.linalg.norm(np.diff(front, axis=0), axis=1)
    median = np.median(steps)
    gaps = np.flatnonzero(steps > factor * max(median, 1e-12))
    return np.insert(front, gaps + 1, np.nan, axis=0)


def plot_front_2d(
    points: PointSets,
    true_front: Optional[Any] = None,
    ax: Any = None,
    *,
    labels: Sequence[str] = ("$f_1$", "$f_2$"),
    title: Optional[str] = None,
    path: Optional[Union[str, os.PathLike]] = None,
    dpi: int = 120,
) -> Any:
    """Scatter a two-objective front, over the true front drawn as a line.

    Args:
      points: ``(n, 2)`` objective vectors, or a mapping ``{label: (n, 2) array}`` to
        draw several sets (one scatter each, with a legend).
      true_front: ``(m, 2)`` points of the true front, e.g.
        ``problem.pareto_front(200)``, drawn as a grey line through the points in the
        order given (sorted by the first objective, as ``Problem.pareto_front``). The
        line breaks where two neighbours are more than 10 times the median spacing
        apart, so a disconnected front such as ZDT3's is drawn piece by piece.
        ``None``: not drawn.
      ax: matplotlib axes to draw on; ``None`` creates a new figure.
      labels: the axis labels.
      title: the axes title.
      path: write the figure there (PNG, PDF, ... by extension).
      dpi: resolution of the written file.

    Returns:
      The :class:`matplotlib.figure.Figure`. Artists: one ``PathCollection`` per
      point set in ``ax.collections``; the true front is ``ax.lines[0]``.

    Raises:
      ImportError: matplotlib is not installed.
      ValueError: an array is not ``(n, 2)``.

    Example:
      >>> from mtopt import plots, problems
      >>> p = problems.zdt1()
      >>> front = p.pareto_front(50)
      >>> fig = plots.plot_front_2d({"ours": front[::10]}, true_front=front)
      >>> ax = fig.axes[0]
      >>> len(ax.lines), len(ax.collections)
      (1, 1)
    """
    sets = _point_sets(points, 2)
    ax = _new_axes(ax)
    if true_front is not None:
        front = _break_at_gaps(_as_points(true_front, 2, "true_front"))
        ax.plot(front[:, 0], front[:, 1], color="0.6", lw=1.5, label="true front", zorder=1)
    for label, values in sets.items():
        ax.scatter(values[:, 0], values[:, 1], s=22, label=label, zorder=2)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if title is not None:
        ax.set_title(title)
    if true_front is not None or any(label is not None for label in sets):
        ax.legend(fontsize=8)
    return _finish(ax, path, dpi)


def plot_front_3d(
    points: PointSets,
    true_front: Optional[Any] = None,
    ax: Any = None,
    *,
    labels: Sequence[str] = ("$f_1$", "$f_2$", "$f_3$"),
    title: Optional[str] = None,
    view: tuple[float, float] = (25.0, 45.0),
    path: Optional[Union[str, os.PathLike]] = None,
    dpi: int = 120,
) -> Any:
    """Scatter a three-objective front, over the true front's points in light grey.

    Args:
      points: ``(n, 3)`` objective vectors, or a mapping ``{label: (n, 3) array}``.
      true_front: ``(m, 3)`` points of the true front (e.g.
        ``problems.dtlz2().pareto_front(500)``), drawn as small grey dots; ``None``:
        not drawn.
      ax: 3-D matplotlib axes (``fig.add_subplot(projection="3d")``); ``None``
        creates a new figure.
      labels: the axis labels.
      title: the axes title.
      view: ``(elevation, azimuth)`` of the camera, in degrees.
      path: write the figure there.
      dpi: resolution of the written file.

    Returns:
      The :class:`matplotlib.figure.Figure`. Artists: the true front (when given)
      is ``ax.collections[0]``, then one collection per point set.

    Raises:
      ImportError: matplotlib is not installed.
      ValueError: an array is not ``(n, 3)``, or ``ax`` is not a 3-D axes.

    Example:
      >>> from mtopt import plots, problems
      >>> p = problems.dtlz2()
      >>> fig = plots.plot_front_3d(p.pareto_front(100)[::7], true_front=p.pareto_front(100))
      >>> len(fig.axes[0].collections)
      2
    """
    sets = _point_sets(points, 3)
    ax = _new_axes(ax, projection="3d", figsize=(5.5, 5.0))
    if true_front is not None:
        front = _as_points(true_front, 3, "true_front")
        ax.scatter(front[:, 0], front[:, 1], front[:, 2], s=3, color="0.7", alpha=0.5,
                   label="true front", depthshade=False)
    for label, values in sets.items():
        ax.scatter(values[:, 0], values[:, 1], values[:, 2], s=20, label=label,
                   depthshade=False)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.zaxis.set_rotate_label(False)
    ax.set_zlabel(labels[2], rotation=90)
    ax.view_init(elev=view[0], azim=view[1])
    if title is not None:
        ax.set_title(title)
    if true_front is not None or any(label is not None for label in sets):
        ax.legend(fontsize=8)
    return _finish(ax, path, dpi)


def _known_pareto_set(problem: Problem) -> Optional[np.ndarray]:
    """The Pareto set, in decision space, of the 2-D problems where it is a known segment."""
    if problem.name == "toy":
        from mtopt.problems._toy import FRONT_X2

        return np.array([[-7.0, FRONT_X2], [7.0, FRONT_X2]])
    return None


def _contour_values(
    f: Callable[[jax.Array], jax.Array],
    scalar: Union[str, Callable[[jax.Array], jax.Array]],
    grid: np.ndarray,
) -> np.ndarray:
    if scalar == "sum":
        to_scalar = jnp.sum
    elif callable(scalar):
        to_scalar = scalar
    else:
        raise ValueError(f"scalar must be 'sum' or a callable, got {scalar!r}.")
    values = jax.jit(jax.vmap(lambda x: to_scalar(jnp.atleast_1d(f(x)))))(
        jnp.asarray(grid, jnp.float32)
    )
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (grid.shape[0],):
        raise ValueError(
            f"scalar must map one objective vector to a scalar; got per-point shape "
            f"{values.shape[1:]}."
        )
    return values


def plot_trajectories(
    problem_or_fn: Union[Problem, Callable[[jax.Array], jax.Array]],
    trajectories: Any,
    ax: Any = None,
    *,
    bounds: Optional[tuple[Sequence[float], Sequence[float]]] = None,
    scalar: Union[str, Callable[[jax.Array], jax.Array]] = "sum",
    pareto_set: Optional[Any] = None,
    resolution: int = 150,
    levels: int = 25,
    colors: Optional[Sequence[Any]] = None,
    title: Optional[str] = None,
    path: Optional[Union[str, os.PathLike]] = None,
    dpi: int = 120,
) -> Any:
    """Optimisation trajectories in a 2-D decision space, over a contour plot.

    Draws the filled contours of a scalar of the objectives (by default their sum)
    over ``bounds``, the Pareto set when it is known, one line per trajectory, its
    start (circle) and its end (star).

    Args:
      problem_or_fn: a :class:`mtopt.problems.Problem` with ``n_var == 2`` (its
        ``f``, its ``bounds`` and, for the toy problem, its Pareto-set segment
        ``x_1 in [-7, 7], x_2 = -8.3552`` are used), or a function ``f(x)`` of one
        point ``x`` of shape ``(2,)`` returning the objectives (or a scalar).
      trajectories: ``(K, S, 2)``: K trajectories of S points each (a single
        ``(S, 2)`` trajectory is accepted too).
      ax: matplotlib axes to draw on; ``None`` creates a new figure.
      bounds: ``((x1_min, x2_min), (x1_max, x2_max))`` of the contour plot; default
        the problem's ``bounds``. Required with a plain function.
      scalar: ``"sum"`` or a function from the objective vector to the scalar drawn.
      pareto_set: ``(m, 2)`` polyline of the Pareto set in decision space, drawn
        as a thick black line; default the problem's when known, else none.
      resolution: grid points per axis for the contours.
      levels: number of contour levels.
      colors: one colour per trajectory (default matplotlib's cycle).
      title: the axes title.
      path: write the figure there.
      dpi: resolution of the written file.

    Returns:
      The :class:`matplotlib.figure.Figure`. Artists: ``ax.lines`` holds the Pareto
      set (first, when drawn) and then the K trajectory lines; ``ax.collections``
      ends with two scatters, the K starts then the K ends.

    Raises:
      ImportError: matplotlib is not installed.
      ValueError: the trajectories are not ``(K, S, 2)``, the problem is not 2-D, or
        bounds are missing.

    Example:
      >>> import numpy as np
      >>> from mtopt import plots, problems
      >>> path = np.linspace([9.0, 9.0], [5.0, -8.0], 20)[None]  # one (1, 20, 2) run
      >>> fig = plots.plot_trajectories(problems.toy(), path, resolution=40)
      >>> len(fig.axes[0].lines)  # the Pareto-set segment and the trajectory
      2
    """
    if isinstance(problem_or_fn, Problem):
        if problem_or_fn.n_var != 2:
            raise ValueError(
                f"plot_trajectories draws a 2-D decision space; {problem_or_fn.name} has "
                f"n_var = {problem_or_fn.n_var}."
            )
        f = problem_or_fn.f
        if bounds is None:
            bounds = problem_or_fn.bounds
        if pareto_set is None:
            pareto_set = _known_pareto_set(problem_or_fn)
    elif callable(problem_or_fn):
        f = problem_or_fn
        if bounds is None:
            raise ValueError("plot_trajectories needs bounds= with a plain function.")
    else:
        raise TypeError(
            "problem_or_fn must be an mtopt.problems.Problem or a function f(x), got "
            f"{type(problem_or_fn).__name__}."
        )
    paths = np.asarray(trajectories, dtype=np.float64)
    if paths.ndim == 2:
        paths = paths[None]
    if paths.ndim != 3 or paths.shape[-1] != 2 or paths.shape[1] < 1:
        raise ValueError(
            f"trajectories must have shape (K, S, 2) (K runs of S points), got {paths.shape}."
        )
    lower, upper = (np.asarray(b, dtype=np.float64).reshape(-1) for b in bounds)
    if lower.shape != (2,) or upper.shape != (2,):
        raise ValueError(
            f"bounds must be ((x1_min, x2_min), (x1_max, x2_max)), got {lower} and {upper}."
        )

    ax = _new_axes(ax, figsize=(5.0, 4.5))
    g1 = np.linspace(lower[0], upper[0], resolution)
    g2 = np.linspace(lower[1], upper[1], resolution)
    mesh1, mesh2 = np.meshgrid(g1, g2)
    grid = np.stack([mesh1.ravel(), mesh2.ravel()], axis=1)
    values = _contour_values(f, scalar, grid).reshape(mesh1.shape)
    ax.contourf(mesh1, mesh2, values, levels=levels, cmap="viridis", alpha=0.8)
    ax.contour(mesh1, mesh2, values, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    if pareto_set is not None:
        ps = _as_points(pareto_set, 2, "pareto_set")
        ax.plot(ps[:, 0], ps[:, 1], color="k", lw=3.5, solid_capstyle="round",
                label="Pareto set", zorder=3)
    if colors is None:
        colors = [f"C{i % 10}" for i in range(paths.shape[0])]
    elif len(colors) != paths.shape[0]:
        raise ValueError(f"colors has {len(colors)} entries for {paths.shape[0]} trajectories.")
    for path_k, color in zip(paths, colors):
        ax.plot(path_k[:, 0], path_k[:, 1], color=color, lw=1.8, zorder=4)
    ax.scatter(paths[:, 0, 0], paths[:, 0, 1], s=30, c="white", edgecolors=list(colors),
               linewidths=1.5, zorder=5, label="start")
    ax.scatter(paths[:, -1, 0], paths[:, -1, 1], s=90, c=list(colors), marker="*",
               edgecolors="k", linewidths=0.5, zorder=6, label="end")
    ax.set_xlim(lower[0], upper[0])
    ax.set_ylim(lower[1], upper[1])
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title is not None:
        ax.set_title(title)
    return _finish(ax, path, dpi)
