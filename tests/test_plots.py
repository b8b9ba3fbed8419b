"""mtopt.plots: figures are built without pyplot, have the right artists, and write PNGs."""

import sys

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from mtopt import plots, problems  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.exists()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


class TestFront2D:
    def test_single_set_with_true_front(self, tmp_path):
        p = problems.zdt1(n_var=5)
        front = p.pareto_front(50)
        path = tmp_path / "front.png"
        fig = plots.plot_front_2d(front[::5], true_front=front, path=path)
        assert isinstance(fig, Figure)
        (ax,) = fig.axes
        assert len(ax.lines) == 1
        assert len(ax.collections) == 1
        np.testing.assert_allclose(ax.collections[0].get_offsets(), np.asarray(front[::5]))
        np.testing.assert_allclose(ax.lines[0].get_xdata(), np.asarray(front[:, 0]))
        assert_png(path)

    def test_labelled_sets_make_a_legend(self):
        pts = {"EPO": np.array([[0.1, 0.9], [0.5, 0.3]]), "STCH": np.array([[0.2, 0.7]])}
        fig = plots.plot_front_2d(pts, title="two sets")
        ax = fig.axes[0]
        assert len(ax.collections) == 2
        assert len(ax.lines) == 0
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["EPO", "STCH"]
        assert ax.get_title() == "two sets"

    def test_disconnected_front_is_broken_into_pieces(self):
        front = np.asarray(problems.zdt3().pareto_front(500))
        fig = plots.plot_front_2d(front[::50], true_front=front)
        xdata = np.asarray(fig.axes[0].lines[0].get_xdata(), dtype=float)
        assert np.sum(np.isnan(xdata)) == 4  # five pieces
        np.testing.assert_allclose(xdata[~np.isnan(xdata)], front[:, 0])

    def test_draws_on_given_axes(self):
        fig = Figure()
        axes = fig.subplots(1, 2)
        out = plots.plot_front_2d(np.array([[0.0, 1.0], [1.0, 0.0]]), ax=axes[1])
        assert out is fig
        assert len(axes[1].collections) == 1
        assert len(axes[0].collections) == 0

    def test_creates_missing_directories(self, tmp_path):
        path = tmp_path / "a" / "b" / "front.png"
        plots.plot_front_2d(jnp.array([[0.0, 1.0]]), path=path)
        assert_png(path)

    def test_bad_shapes(self):
        with pytest.raises(ValueError, match=r"points must have shape \(n_points, 2\)"):
            plots.plot_front_2d(np.zeros((4, 3)))
        with pytest.raises(ValueError, match="true_front"):
            plots.plot_front_2d(np.zeros((4, 2)), true_front=np.zeros(5))
        with pytest.raises(ValueError, match="empty mapping"):
            plots.plot_front_2d({})


class TestFront3D:
    def test_artists_and_file(self, tmp_path):
        p = problems.dtlz2()
        front = p.pareto_front(200)
        path = tmp_path / "front3d.png"
        fig = plots.plot_front_3d({"EPO": front[::10], "STCH": front[5::10]},
                                  true_front=front, path=path)
        ax = fig.axes[0]
        assert hasattr(ax, "zaxis")
        assert len(ax.collections) == 3  # true front, then one per set
        assert ax.get_zlabel() == "$f_3$"
        assert_png(path)

    def test_without_true_front(self):
        fig = plots.plot_front_3d(np.eye(3))
        assert len(fig.axes[0].collections) == 1

    def test_needs_3d_axes(self):
        ax = Figure().add_subplot()
        with pytest.raises(ValueError, match="3-D axes"):
            plots.plot_front_3d(np.eye(3), ax=ax)

    def test_bad_shape(self):
        with pytest.raises(ValueError, match=r"\(n_points, 3\)"):
            plots.plot_front_3d(np.zeros((4, 2)))


class TestTrajectories:
    def paths(self, k=3, s=12):
        starts = np.asarray(problems.toy().start_points[:k])
        ends = np.stack([np.linspace(-5.0, 5.0, k), np.full(k, -8.3)], axis=1)
        return np.linspace(starts, ends, s).transpose(1, 0, 2)  # (k, s, 2)

    def test_toy_problem(self, tmp_path):
        paths = self.paths()
        path = tmp_path / "traj.png"
        fig = plots.plot_trajectories(problems.toy(), paths, resolution=30, title="LS",
                                      path=path)
        ax = fig.axes[0]
        # the Pareto-set segment, then one line per trajectory
        assert len(ax.lines) == 1 + 3
        np.testing.assert_allclose(ax.lines[0].get_ydata(), [-8.3552, -8.3552])
        np.testing.assert_allclose(ax.lines[0].get_xdata(), [-7.0, 7.0])
        for line, p in zip(ax.lines[1:], paths):
            np.testing.assert_allclose(line.get_xydata(), p)
        # contourf, contour lines, start markers, end markers
        assert len(ax.collections) == 4
        np.testing.assert_allclose(ax.collections[-2].get_offsets(), paths[:, 0])
        np.testing.assert_allclose(ax.collections[-1].get_offsets(), paths[:, -1])
        assert ax.get_xlim() == (-10.0, 10.0)
        assert ax.get_title() == "LS"
        assert_png(path)

    def test_plain_function_needs_bounds(self):
        def f(x):
            return jnp.stack([jnp.sum((x - 1.0) ** 2), jnp.sum((x + 1.0) ** 2)])

        paths = np.linspace([[2.0, 2.0]], [[0.0, 0.0]], 5, axis=1)  # (1, 5, 2)
        fig = plots.plot_trajectories(f, paths, bounds=((-3.0, -3.0), (3.0, 3.0)),
                                      resolution=20, pareto_set=[[-1.0, -1.0], [1.0, 1.0]])
        ax = fig.axes[0]
        assert len(ax.lines) == 2
        with pytest.raises(ValueError, match="needs bounds="):
            plots.plot_trajectories(f, paths)
        fig = plots.plot_trajectories(f, paths[0], bounds=((-3.0, -3.0), (3.0, 3.0)),
                                      resolution=20, scalar=lambda v: v[0])
        assert len(fig.axes[0].lines) == 1  # no known Pareto set for a plain function

    def test_contour_values_follow_the_scalar(self):
        p = problems.toy()
        grid = np.array([[9.0, 9.0], [0.0, -8.3552]])
        total = plots._contour_values(p.f, "sum", grid)
        expected = [float(jnp.sum(p.f(jnp.asarray(g, jnp.float32)))) for g in grid]
        np.testing.assert_allclose(total, expected, rtol=1e-5)
        with pytest.raises(ValueError, match="scalar must be 'sum' or a callable"):
            plots._contour_values(p.f, "max", grid)

    def test_errors(self):
        with pytest.raises(ValueError, match=r"\(K, S, 2\)"):
            plots.plot_trajectories(problems.toy(), np.zeros((2, 5, 3)))
        with pytest.raises(ValueError, match="n_var = 30"):
            plots.plot_trajectories(problems.zdt1(), np.zeros((1, 5, 2)))
        with pytest.raises(TypeError, match="Problem or a function"):
            plots.plot_trajectories(3.0, np.zeros((1, 5, 2)))
        with pytest.raises(ValueError, match="colors has 1 entries for 3"):
            plots.plot_trajectories(problems.toy(), self.paths(), colors=["red"],
                                    resolution=10)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'mtopt\[examples\]'"):
        plots.plot_front_2d(np.zeros((2, 2)))


def test_import_mtopt_stays_light():
    """``import mtopt`` (and ``mtopt.plots``) loads none of flax.nnx, matplotlib,
    scikit-learn, orbax or tqdm; ``mtopt.tasks`` and ``mtopt.pareto.train_psl``
    load flax.nnx on first use."""
    import subprocess

    heavy = ["flax.nnx", "matplotlib", "sklearn", "orbax", "tqdm"]
    code = (
        "import sys, mtopt, mtopt.plots\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
        "mtopt.pareto.train_psl, mtopt.tasks.get_task\n"
        "print('flax.nnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout
