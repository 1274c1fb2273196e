"""Outputs of a spectral KS case whose 2/3 cut moved when it became strict (2026-11-28: mode N/3 at N
divisible by 3 is no longer kept) are not reused, resumed or trained on silently; every other case
keeps the checksums its outputs recorded (``KuramotoSivashinskyConfig.strict_cut_moved``,
``CaseConfig.changed_numerics``)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from hybridnde.config import KuramotoSivashinskyConfig
from hybridnde.data import load_training_data
from hybridnde.io import DataError, ResumeRefused
from hybridnde.rollout_job import run_rollout
from hybridnde.simulate import SIMULATION_SECTIONS
from hybridnde.simulation_job import run_simulation
from hybridnde.simulation_resume import finished_simulation
from solvers.kuramoto_sivashinsky import dealiasing_mask
from test_rollout import interrupted_rollout, small_cnn
from test_simulation_job import small_case, stop_in_spin_up

N48 = ("system.n_points=48",)


def earlier_code(monkeypatch):
    """What hybridnde computed before the cut became strict: no case's cut had moved yet."""
    monkeypatch.setattr(KuramotoSivashinskyConfig, "strict_cut_moved", lambda self: False)


@pytest.mark.parametrize("n_points", [30, 40, 48, 64, 96, 256, 1024])
@pytest.mark.parametrize("fraction", [2.0 / 3.0, 0.5, 0.75, 1.0])
def test_the_cut_moved_exactly_where_the_solvers_mask_keeps_fewer_modes_than_the_inclusive_one(n_points, fraction):
    """Against the solver's own mask and the rule before (``m <= fraction N/2``), below the Nyquist mode
    (whose derivative is zero, so keeping it or not changes nothing)."""
    half = n_points // 2
    before = np.arange(half) <= fraction * half + 1e-9
    moved = not np.array_equal(dealiasing_mask(half, fraction)[:half], before)
    config = KuramotoSivashinskyConfig(n_points=n_points, dealiasing_fraction=fraction)
    assert config.strict_cut_moved() == moved
    assert not KuramotoSivashinskyConfig(n_points=n_points, dealiasing_fraction=fraction,
                                         method="finite_difference").strict_cut_moved()
    if fraction == 2.0 / 3.0:
        assert moved == (n_points % 3 == 0)


@pytest.mark.parametrize("extra, moved", [(N48, True), (("system.n_points=96",), True), ((), False),
                                          ((*N48, "system.method=\"finite_difference\"", "time.integrator=\"rk4\"", "time.dt=0.004"), False),
                                          ((*N48, "system.dealiasing_fraction=0.5"), True),
                                          ((*N48, "system.dealiasing_fraction=0.6"), False)])
def test_only_cases_whose_cut_moved_have_another_checksum_than_before(monkeypatch, extra, moved):
    """Sections without [system] keep their checksums in any case."""
    case, tables = small_case("ks_l22", *extra), (SIMULATION_SECTIONS, None, ("time", "training"))
    now = [case.checksum(sections) for sections in tables]
    assert bool(case.changed_numerics()) == moved
    earlier_code(monkeypatch)
    before = [case.checksum(sections) for sections in tables]
    assert [a != b for a, b in zip(now, before)] == [moved, moved, False]


def test_a_truth_made_before_is_neither_finished_nor_resumed_and_training_on_it_warns(tmp_path, monkeypatch, caplog):
    case = small_case("ks_l22", *N48)
    with monkeypatch.context() as patch:
        earlier_code(patch)
        made_before = run_simulation(case, tmp_path / "before.nc", progress=False)
        assert finished_simulation(made_before, case)
        stop_in_spin_up(patch, case, tmp_path / "interrupted.nc", steps=3)
    assert not finished_simulation(made_before, case)
    with pytest.raises(ResumeRefused, match=r"cannot resume: the case differs in the spectral step's 2/3 cut "
                                            r"\(strict since 2026-11-28: mode 16 of N = 48 .*\); rerun .* without --resume"):
        run_simulation(case, tmp_path / "interrupted.nc", resume=True, progress=False)
    with caplog.at_level(logging.WARNING, logger="hybridnde"):
        load_training_data(made_before, case, window_length=3)
    assert "simulated by an earlier hybridnde, which differs in the spectral step's 2/3 cut" in caplog.text
    caplog.clear()
    made_now = run_simulation(case, tmp_path / "now.nc", progress=False)
    assert finished_simulation(made_now, case)
    with caplog.at_level(logging.WARNING, logger="hybridnde"):
        load_training_data(made_now, case, window_length=3)
    assert "earlier hybridnde" not in caplog.text


def test_a_rollout_interrupted_before_is_not_resumed_and_says_why(tmp_path, monkeypatch):
    case = small_case("ks_l22", *N48, "rollout.members=2", "rollout.batch_size=2", "rollout.steps=40",
                      "rollout.save_every=2", "output.time_chunk=3")
    model, out = small_cnn(), tmp_path / "rollout.nc"
    with monkeypatch.context() as patch:
        earlier_code(patch)
        interrupted_rollout(case, out, model, after=4.0)
    with pytest.raises(DataError, match=r"cannot resume: the case differs in the spectral step's 2/3 cut \(strict"):
        run_rollout(case, out, closure=model, resume=True, progress=False)


def test_a_training_checkpoint_made_before_is_refused_naming_the_cut():
    """Its fingerprint holds the training checksum, which moved; the refusal names why, not "nothing"."""
    from hybridnde.training.build import _changes_since

    affected, unaffected = small_case("ks_l22", *N48), small_case("ks_l22")
    assert _changes_since({"case_toml": affected.to_toml()}, affected, None) == affected.changed_numerics() != []
    assert _changes_since({"case_toml": unaffected.to_toml()}, unaffected, None) == []
