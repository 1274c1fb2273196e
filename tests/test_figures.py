"""Figures are written as non-empty PNGs of a sane size, also for diverged members (hybridnde.figures)."""
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from hybridnde import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, *, min_width=500, max_width=2000):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    height, width = image.shape[:2]
    assert min_width <= width <= max_width and 300 <= height <= 1200, (width, height)
    assert image[..., :3].std() > 0.05  # not blank: lines, colours and text were drawn
    assert not list(path.parent.glob("*.part"))  # written atomically


@pytest.fixture
def ks_like():
    rng = np.random.default_rng(0)
    x = np.arange(64) * 22.0 / 64
    times = np.arange(81) * 0.5
    truth = np.sin(2 * np.pi * x / 22.0 + 0.1 * times[:, None]) + 0.1 * rng.standard_normal((81, 64))
    predicted = truth + 0.01 * np.exp(0.1 * times)[:, None] * rng.standard_normal((81, 64))
    predicted[70:] = np.nan  # blew up: drawn grey
    return x, times, truth, predicted


def test_space_time_figure(tmp_path, ks_like):
    x, times, truth, predicted = ks_like
    figure = figures.space_time_figure(x, times, truth, predicted, valid_time=20.0, title="KS member 3")
    assert [axis.get_title() for axis in figure.axes[:3]] == ["truth", "hybrid", "error (hybrid - truth)"]
    assert figure.axes[0].get_ylabel() == "time t" and figure.axes[0].get_xlabel() == "position x"
    assert len(figure.axes) == 5  # three panels and two colourbars (fields; error)
    check_png(figures.save_figure(figure, tmp_path / "space_time.png"), min_width=1000)
    from PIL import Image

    from hybridnde.io import package_version

    with Image.open(tmp_path / "space_time.png") as image:  # which code drew it travels with the figure
        assert image.text["Software"] == f"hybridnde {package_version()}"


def test_error_growth_and_spectrum_figures(tmp_path):
    times = np.linspace(0, 40, 161)
    median = 1e-6 * np.exp(0.4 * times)
    median[150:] = np.inf  # diverged: a gap, not a crash
    figure = figures.error_growth_figure(times, median, median / 3, median * 3, threshold=0.5, valid_time=32.0,
                                         valid_time_spread=(30.0, 35.0), lyapunov_exponent=0.045, time_units="s")
    axis = figure.axes[0]
    assert axis.get_yscale() == "log" and axis.get_xlabel() == "time t [s]"
    assert any("Lyapunov" in other.get_xlabel() for other in axis.child_axes)  # second time axis on top
    check_png(figures.save_figure(figure, tmp_path / "error_growth.png"))
    zero = np.zeros_like(times)  # a file against itself: no positive error, linear axis
    assert figures.error_growth_figure(times, zero, zero, zero, threshold=0.5).axes[0].get_yscale() == "linear"
    assert axis.get_ylabel().endswith(r"\mathrm{rms}(u^*)$")  # the label names what the error was divided by
    anomaly = figures.error_growth_figure(times, median, median / 3, median * 3, threshold=0.5, error_scale="anomaly")
    assert "langle u^*" in anomaly.axes[0].get_ylabel()
    k = np.arange(33) * 2 * np.pi / 22.0
    energy = np.exp(-np.arange(33.0))
    energy[22:] = 0.0  # dealiased modes are left out, not drawn at a floor
    figure = figures.spectrum_figure(k, energy, k[:17], 2 * energy[:17], distance=0.3)
    assert "0.3" in figure.axes[0].get_legend().get_texts()[1].get_text()
    check_png(figures.save_figure(figure, tmp_path / "spectrum.png"))


def test_phase_portrait_and_invariant_drift_figures(tmp_path):
    t = np.linspace(0, 6, 200)
    orbit = np.stack([np.cos(t), np.sin(t), -np.sin(t), np.cos(t)], axis=-1)
    truth = np.stack([orbit, 0.8 * orbit])
    predicted = truth * (1 + 0.02 * t)[None, :, None]
    figure = figures.phase_portrait_figure(truth, predicted, ["x", "y", "vx", "vy"], members=[0, 1])
    assert [(a.get_xlabel(), a.get_ylabel()) for a in figure.axes] == [("x", "y"), ("vx", "vy")]
    check_png(figures.save_figure(figure, tmp_path / "phase.png"))
    lorenz = figures.phase_portrait_figure(truth[..., :3], predicted[..., :3], ["x", "y", "z"])
    assert len(lorenz.axes) == 3
    drift = {"energy": np.abs(predicted[..., 0] - truth[..., 0]), "angular_momentum": 1e-3 * t * np.ones((2, 1))}
    drift["energy"][1, 100:] = np.nan  # a diverged member is left out
    figure = figures.invariant_drift_figure(t, drift, reference_drift={"energy": 1e-9 * np.ones((2, 200))})
    assert figure.axes[0].get_yscale() == "log"
    check_png(figures.save_figure(figure, tmp_path / "drift.png"))


def test_figures_leave_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('svg'); import hybridnde.figures, sys; "
            "assert matplotlib.get_backend() == 'svg'; assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
