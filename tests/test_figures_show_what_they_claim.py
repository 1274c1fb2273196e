"""Figures show what the metrics say (helper-119's review): bands that do not vanish where members
diverge, a spectrum the metrics call undefined not drawn as a match, drift medians that count the
diverged members, cells at their samples' times, axis labels true for every curve on them."""
from pathlib import Path

import numpy as np
import pytest

from hybridnde import figures
from hybridnde.pipeline import plots


def band_top(axis, times_after: float) -> float:
    """The highest point of the axis' first band at times after ``times_after``."""
    vertices = np.concatenate([path.vertices for path in axis.collections[0].get_paths()])
    return float(vertices[vertices[:, 0] > times_after, 1].max())


def test_the_error_band_reaches_the_top_where_its_upper_percentile_diverged():
    """p84 infinite with a finite median: the band stopped while the median went on, as if the spread
    had shrunk to nothing just where it is widest; the figure now also says how many diverged."""
    times = np.linspace(0, 10, 101)
    median = 0.01 * np.exp(0.3 * times)
    upper = 3 * median
    upper[60:] = np.inf
    figure = figures.error_growth_figure(times, median, median / 3, upper, threshold=0.5,
                                         note="3 of 10 members diverged (error infinite)")
    axis = figure.axes[0]
    assert band_top(axis, 7.0) == pytest.approx(axis.get_ylim()[1])
    assert np.isfinite(axis.get_lines()[0].get_ydata()[60:]).all()  # the median goes on
    assert "3 of 10 members diverged (error infinite)" in [text.get_text() for text in axis.texts]


def test_the_comparison_band_reaches_the_top_and_its_labels_hold_for_every_curve(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, out: captured.setdefault("figure", figure))

    def metrics(kind, exponent):
        return {"error_growth": {"time": [0.0, 1.0, 2.0], "p16": [0.01, 0.1, 0.2], "median": [0.02, 0.2, 0.4],
                                 "p84": [0.04, 0.4, None]},  # null: infinite (diverged members)
                "threshold": 0.5, "valid_prediction_time": {"median": 1.5}, "spread_percentiles": [16.0, 84.0],
                "start_time": 0.0, "error_scale_kind": kind, "lyapunov_exponent": exponent}

    plots.error_growth_comparison_figure([("a", metrics("rms", 0.05)), ("b", metrics("anomaly", 0.1))],
                                         tmp_path / "c.png")
    axis = captured["figure"].axes[0]
    assert band_top(axis, 1.5) == pytest.approx(axis.get_ylim()[1])
    assert "rms" not in axis.get_ylabel() and "legend" in axis.get_ylabel()
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert legend[:2] == ["a (VPT 1.5), error / rms scale", "b (VPT 1.5), error / anomaly scale"]
    assert not axis.child_axes  # two exponents: no one Lyapunov-time axis
    captured.clear()
    plots.error_growth_comparison_figure([("a", metrics("rms", 0.05))], tmp_path / "c.png")
    axis = captured["figure"].axes[0]
    assert axis.get_ylabel() == figures.error_label("rms") and axis.child_axes


def test_the_drift_median_counts_diverged_members_and_leaves_undefined_ones_out():
    """7 of 8 members diverged (+inf): the median was the one survivor's drift."""
    times = np.linspace(0, 10, 11)
    curves = np.tile(np.linspace(0, 1, 11), (8, 1)) * np.arange(1, 9)[:, None]
    curves[:7, 5:] = np.inf
    figure = figures.invariant_drift_figure(times, {"energy": curves}, percentiles=(5.0, 95.0))
    axis = figure.axes[0]
    median = axis.get_lines()[0].get_ydata()
    assert np.isnan(median[5:]).all() and median[4] == pytest.approx(np.median(curves[:, 4]))
    assert band_top(axis, 6.0) == pytest.approx(axis.get_ylim()[1])
    assert "energy, 5-95th percentile" in [text.get_text() for text in axis.get_legend().get_texts()]
    undefined = curves.copy()
    undefined[:7, 5:] = np.nan  # undefined (left the invariant's domain), not diverged: left out
    median = figures.invariant_drift_figure(times, {"energy": undefined}).axes[0].get_lines()[0].get_ydata()
    assert median[-1] == pytest.approx(8.0)


def test_space_time_cells_sit_on_their_samples_and_the_error_scale_is_capped_at_the_fields():
    x = np.arange(8) * 0.5
    times = np.arange(5) * 0.25
    truth = np.sin(x)[None, :] * np.ones((5, 1))
    predicted = truth.copy()
    predicted[0, 0] += 0.01  # a small error early ...
    predicted[4] = 1e6  # ... and a blow-up: its scale made the early error invisible
    figure = figures.space_time_figure(x, times, truth, predicted)
    truth_image, _, error_image = (axis.get_images()[0] for axis in figure.axes[:3])
    assert truth_image.get_extent() == pytest.approx([-0.25, 3.75, -0.125, 1.125])
    assert error_image.get_clim() == pytest.approx(truth_image.get_clim())


def test_a_spectrum_the_metrics_call_undefined_is_not_drawn():
    k = np.arange(17) * 2 * np.pi / 22.0
    energy = np.exp(-np.arange(17.0))
    figure = figures.spectrum_figure(k, energy, k, energy, distance=float("nan"), undefined=True)
    axis = figure.axes[0]
    assert [line.get_label() for line in axis.get_lines()] == ["truth"]
    assert any("undefined" in text.get_text() for text in axis.texts)


def test_the_training_figure_says_when_validation_held_nothing_out(tmp_path, monkeypatch):
    captured = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, out: captured.setdefault("figure", figure))
    records = [{"epoch": 1, "loss": 1.0, "val_loss": 1.2}, {"epoch": 2, "loss": 0.5, "val_loss": 0.6}]
    plots.training_curves_figure(records, Path(tmp_path / "t.png"), held_out=False)
    legend = [text.get_text() for text in captured["figure"].axes[0].get_legend().get_texts()]
    assert "validation loss (on the training members: none held out)" in legend
    assert plots.held_out_validation({"data": {"train_members": [0], "validation_members": [0]}}) is False
    assert plots.held_out_validation({"data": {"train_members": [0, 1], "validation_members": [2]}}) is True
    assert plots.held_out_validation(None) is True


def test_write_figures_marks_diverged_members_and_an_undefined_spectrum(tmp_path, monkeypatch):
    """The evaluation's figures get +inf drift after a member's states stop being finite, a note of the
    diverged members, and no hybrid spectrum when too few states are finite."""
    from hybridnde.alignment import AlignedPair
    from hybridnde.evaluate import compute_metrics
    from hybridnde.evaluation_figures import write_figures

    seen = {}
    for name in ("invariant_drift_figure", "error_growth_figure", "spectrum_figure"):
        real = getattr(figures, name)
        monkeypatch.setattr(figures, name, lambda *args, _real=real, _name=name, **kwargs: (
            seen.__setitem__(_name, (args, kwargs)), _real(*args, **kwargs))[1])

    def pair(states, truth, state_dim, coords, **extra):
        members, times = states.shape[:2]
        return AlignedPair(times=np.arange(times) * 0.25, predicted=states, truth=truth, members=np.arange(members),
                           reference_members=np.arange(members), status=np.zeros(members, np.int8),
                           blowup_time=np.full(members, np.nan), state_dim=state_dim, state_coords=coords,
                           reference_initial=truth[:, 0], **extra)

    t = np.arange(40) * 0.25
    truth = np.stack([np.stack([np.cos(t + m), np.sin(t + m)], axis=-1) for m in range(4)])
    predicted = truth * 1.01
    predicted[:3, 20:] = np.nan  # 3 of 4 members diverge
    ode = pair(predicted, truth, "component", ["x", "y"])
    write_figures(ode, compute_metrics(ode), tmp_path / "ode", invariants=lambda u: {"r2": (u ** 2).sum(-1)})
    curves = seen["invariant_drift_figure"][0][1]["r2"]
    assert np.isposinf(curves[:3, 20:]).all() and np.isfinite(curves[3]).all()
    assert seen["error_growth_figure"][1]["note"] == "3 of 4 members diverged (error infinite)"

    x = np.arange(16) * 22.0 / 16
    field = np.stack([np.stack([np.cos(2 * np.pi * x / 22.0 + 0.1 * k + m) for k in range(40)]) for m in range(2)])
    blown = field.copy()
    blown[:, 5:] = np.nan  # 10 of 80 states finite: the metrics call the spectrum undefined
    ks = pair(blown, field, "x", x, domain_length=22.0)
    write_figures(ks, compute_metrics(ks), tmp_path / "ks")
    assert seen["spectrum_figure"][1]["undefined"] is True
    assert "(over the 12.5% finite states)" in seen["spectrum_figure"][1]["title"]


def test_a_float32_files_round_off_is_not_drawn_as_spectral_energy():
    """The spectrum's floor (1e-20 of the peak) suits float64: a float32 file's dealiased modes hold
    round-off near 1e-16 of the peak and were drawn as a flat plateau of the truth's energy."""
    from hybridnde.alignment import align_trajectories
    from hybridnde.io import trajectory_dataset

    x = np.arange(16) * 22.0 / 16
    u = np.broadcast_to(np.sin(2 * np.pi * x / 22.0), (2, 3, 16)).copy()
    double = trajectory_dataset(u, np.arange(3.0), state_dim="x", state_coords=x)
    single = trajectory_dataset(u.astype(np.float32), np.arange(3.0), state_dim="x", state_coords=x)
    assert align_trajectories(double, double).precision == np.finfo(np.float64).eps
    precision = align_trajectories(single, double).precision
    assert precision == np.finfo(np.float32).eps
    assert figures.energy_floor(np.finfo(np.float64).eps) == 1e-20
    k = np.arange(9) * 2 * np.pi / 22.0
    energy = np.array([0.0, 1.0, 1e-3, 1e-6, 4.5e-17, 4.5e-17, 1e-17, 0.0, 0.0])  # float32 round-off from mode 4
    for floor, drawn in ((1e-20, 6), (figures.energy_floor(precision), 3)):
        line = figures.spectrum_figure(k, energy, k, energy, floor=floor).axes[0].get_lines()[0]
        assert int(np.isfinite(line.get_ydata()).sum()) == drawn
