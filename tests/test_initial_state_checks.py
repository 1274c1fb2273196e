"""Initial states are refused before any step where they cannot be what the case says: a state that
overflows the compute dtype, and drawn fields with more modes than the host's grid holds (helper-114's
review of the inputs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hybridnde.config import ConfigError, load_case
from hybridnde.initial_conditions import draw_initial_conditions
from hybridnde.io import DataError, trajectory_dataset, write_netcdf
from hybridnde.rollout_inputs import initial_states
from hybridnde.systems import build_host_solver, build_solver

CASES_DIR = Path(__file__).resolve().parents[1] / "cases"


def test_a_state_that_overflows_float32_is_refused_not_taken_as_inf():
    """Checked in float64 before the cast: 1e39 passed as finite and became inf."""
    case = load_case(CASES_DIR / "lorenz63.toml", overrides=["initial_condition.value=[1e39, 1.0, 1.0]",
                                                              'compute.dtype="float32"'])
    with pytest.raises(DataError, match=r"the initial conditions overflow torch.float32 \(compute.dtype\)"):
        draw_initial_conditions(case.initial_condition, build_solver(case.system, case.time, dtype=torch.float32),
                                range(1))
    assert draw_initial_conditions(case.initial_condition, build_solver(case.system, case.time), range(1))[0, 0] == 1e39


def test_a_rollouts_states_from_a_file_that_overflow_float32_are_refused(tmp_path):
    states = write_netcdf(trajectory_dataset(np.array([[[1e39, 1.0, 1.0]]]), [0.0],
                                             state_dim="component", state_coords=["x", "y", "z"]), tmp_path / "ic.nc")
    case = load_case(CASES_DIR / "lorenz63.toml", overrides=[f"rollout.initial_conditions='{states}'",
                                                              "rollout.members=1", 'compute.dtype="float32"'])
    with pytest.raises(DataError, match=r"ic.nc: the initial states overflow torch.float32 \(compute.dtype\)"):
        initial_states(case, build_host_solver(case, dtype=torch.float32), range(1))


def test_drawn_fields_with_more_modes_than_the_hosts_grid_holds_are_refused():
    """ks_fd's host runs on 16 of the truth's 64 points: 12 drawn modes folded onto lower ones (mode 12
    onto mode 4) while the training data were the truth filtered to the grid."""
    case = load_case(CASES_DIR / "ks_fd.toml", overrides=["initial_condition.n_modes=12"])
    host = build_host_solver(case)
    assert host.n_points == 16 and case.system.n_points == 64
    for modes in (12, 8):  # 8: the Nyquist mode, which the training data filtered onto 16 points drop
        case = load_case(CASES_DIR / "ks_fd.toml", overrides=[f"initial_condition.n_modes={modes}"])
        with pytest.raises(ConfigError, match=rf"initial_condition.n_modes = {modes}: the host's grid of 16 points "
                                              r"holds modes up to 7 \(below N/2\), so the drawn states would alias"):
            initial_states(case, host, range(2))
    fine = load_case(CASES_DIR / "ks_fd.toml", overrides=["initial_condition.n_modes=7"])
    assert initial_states(fine, build_host_solver(fine), range(2))[2].shape == (2, 16)
