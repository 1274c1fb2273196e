"""From a ``hybridnde simulate`` NetCDF file to training windows on the host grid.

* ``load_training_data`` checks that the file fits the case (schema, system, grid, sampling) before
  any work, restricts sub-grid truths onto the host grid (``grids.restrict_to_grid``) and splits the
  members into training and validation sets (member-wise: the last members by index validate);
* ``WindowSet`` indexes windows ``x_t, x_{t+1}, ..., x_{t+L-1}`` of consecutive samples lazily
  (only ``(member, start)`` pairs are stored; a batch gathers its windows);
* ``normalization_statistics`` gives the closure's input/output normalisation from training data.
"""
from __future__ import annotations

import functools
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from .config import CaseConfig, KuramotoSivashinskyConfig, to_mapping
from .grids import check_domain_length, restrict_to_grid
from .checksums import (data_checksum, file_checksum, present_file_checksum, records_data,  # (some re-exported)
                        recorded_data_checksum)
from .io import STATUS_FLAGS, DataError, open_trajectories

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainingData", "WindowSet", "load_training_data", "normalization_statistics", "file_checksum",
           "data_checksum", "records_data", "recorded_data_checksum", "split_members", "window_start_times"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowSet:
    """Windows of ``length`` consecutive samples from trajectories ``(member, time, *state)``.

    ``starts: (n_windows, 2)`` rows of ``(row in trajectories, first time index)``; windows with a
    non-finite value are left out when the set is built. ``start_time``: the time of the
    trajectories' first sample (what a window's start index counts from).
    """

    trajectories: Tensor
    starts: Tensor
    length: int
    start_time: float = 0.0

    @classmethod
    def build(cls, trajectories: Tensor, length: int, *, stride: int = 1, start_time: float = 0.0) -> "WindowSet":
        """Every window of ``length`` samples starting every ``stride`` samples, of each member; none
        where the trajectories are shorter than ``length``. ``ValueError`` names a wrong argument."""
        if not isinstance(trajectories, Tensor):
            raise TypeError(f"trajectories must be a torch.Tensor (member, time, *state), not "
                            f"{type(trajectories).__name__}; convert with torch.as_tensor")
        if trajectories.ndim < 3:
            raise ValueError(f"trajectories have shape {tuple(trajectories.shape)}; windows need (member, time, "
                             "*state): add a member axis (trajectories[None]) or a state axis (trajectories[..., None])")
        if trajectories.shape[0] == 0:
            raise ValueError("trajectories hold no members: nothing to cut windows from")
        if length < 2 or stride < 1:
            raise ValueError(f"length = {length}, stride = {stride}: a window needs at least 2 samples (a step) and "
                             "a stride of at least 1")
        n_members, n_times = trajectories.shape[:2]
        if n_times < length:
            return cls(trajectories, torch.zeros(0, 2, dtype=torch.long, device=trajectories.device), length,
                       float(start_time))
        first = torch.arange(0, n_times - length + 1, stride, device=trajectories.device)
        finite = torch.isfinite(trajectories.reshape(n_members, n_times, -1)).all(-1)  # (member, time)
        # a window is usable when all its samples are finite: a sliding minimum over time
        usable = finite.unfold(1, length, 1).all(-1)[:, first]  # (member, n_first)
        rows, columns = torch.nonzero(usable, as_tuple=True)
        starts = torch.stack([rows, first[columns]], dim=1)
        return cls(trajectories, starts, length, float(start_time))

    def start_times(self, sample_interval: float, index: Tensor | None = None) -> Tensor:
        """``(n,)`` float64 on the CPU: the times of windows ``index``' first samples (default: all),
        for samples ``sample_interval`` apart."""
        starts = self.starts if index is None else self.starts[index.to(self.starts.device)]
        return window_start_times(starts, self.start_time, sample_interval)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def gather(self, index: Tensor | None = None) -> Tensor:
        """Windows ``index`` (default: all): ``(batch, length, *state)``."""
        starts = self.starts if index is None else self.starts[index.to(self.starts.device)]
        times = starts[:, 1:2] + torch.arange(self.length, device=starts.device)
        return self.trajectories[starts[:, :1], times]


def window_start_times(starts: Tensor, start_time: float, sample_interval: float) -> Tensor:
    """``(n,)`` float64 on the CPU: the first-sample times of windows ``starts: (n, 2)`` (``(row,
    first time index)``) of trajectories whose first sample is at ``start_time``."""
    return start_time + starts[:, 1].cpu().double() * sample_interval


@dataclass(frozen=True)
class TrainingData:
    """Host-grid trajectories of one truth file, split member-wise.

    ``train``/``validation``: ``(members, time, *state)`` on the training device and dtype.
    """

    train: Tensor
    validation: Tensor
    train_members: tuple[int, ...]
    validation_members: tuple[int, ...]
    sample_interval: float
    path: str
    checksum: str  # of the file's data (``data_checksum``): what outputs made from it record
    attrs: Mapping[str, Any] = field(default_factory=dict)
    start_time: float = 0.0  # the time of the first sample

    @functools.cached_property
    def file_checksum(self) -> str:
        """Of the file's bytes (what closures and checkpoints recorded before data checksums), read
        only where asked for; ``""`` without the file."""
        return present_file_checksum(self.path)

    def made_from(self, recorded: str | None) -> bool:
        """Whether ``recorded`` (a closure's or checkpoint's checksum of its data) is of these data
        (``records_data``; the file's bytes hashed once however often it is asked)."""
        return records_data(recorded, self.path, self.checksum, bytes_sum=lambda: self.file_checksum)

    def windows(self, split: str, length: int, *, stride: int = 1) -> WindowSet:
        trajectories = {"train": self.train, "validation": self.validation}[split]
        return WindowSet.build(trajectories, length, stride=stride, start_time=self.start_time)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description for closure metadata."""
        return {"path": self.path, "sha256": self.file_checksum, "data_sha256": self.checksum,
                "train_members": list(self.train_members),
                "validation_members": list(self.validation_members), "sample_interval": self.sample_interval,
                "times": int(self.train.shape[1]),
                "config_checksum": str(self.attrs.get("config_checksum", "")),
                "title": str(self.attrs.get("title", ""))}


def split_members(members: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Member-wise split: the last ``round(fraction * n)`` members validate (at least one when
    ``fraction > 0`` and there are two or more members); returns ``(train, validation)``."""
    n = len(members)
    count = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    else:
        count = 0
    return members[: n - count], members[n - count:]


def _check_system(dataset, case: CaseConfig, path: Path) -> None:
    if dataset.attrs.get("stage") == "rollout":  # its case_toml names the true [system], not what made the data
        closure = str(dataset.attrs.get("closure_checksum", "none"))
        made = "the bare host solver" if closure in ("", "none") else f"closure {closure[:12]}..."
        raise DataError(f"{path} is a rollout (of {made}), not the true system's trajectories; train on a truth "
                        "written by `hybridnde simulate CASE.toml`")
    text = dataset.attrs.get("case_toml", "")
    if not text:
        return  # files from other tools: the grid and sampling checks below still apply
    try:
        data_system = tomllib.loads(text).get("system", {})
    except tomllib.TOMLDecodeError:
        raise DataError(f"{path}: the case_toml attribute is not valid TOML; regenerate the file") from None
    case_system = to_mapping(case.system)
    differing = []
    for key, value in case_system.items():
        other = data_system.get(key)
        if isinstance(value, (int, float)) and isinstance(other, (int, float)):
            same = math.isclose(float(value), float(other), rel_tol=1e-12, abs_tol=1e-15)
        elif isinstance(value, (list, tuple)) and isinstance(other, (list, tuple)):
            same = len(value) == len(other) and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(value, other))
        else:
            same = value == other
        if not same:
            differing.append(f"system.{key}: data {other!r}, case {value!r}")
    if differing:
        raise DataError(f"{path} was simulated for another system ({'; '.join(differing)}); simulate the data "
                        "with this case (`hybridnde simulate CASE.toml`) or fix the case's [system]")


def _warn_other_simulation(dataset, case: CaseConfig, path: Path) -> None:
    """A truth simulated with other ``[time]``, ``[initial_condition]`` or precision trains as it is (its
    system and sampling are checked above), but say which settings differ: a forgotten ``--quick``, say,
    or data from another case (``hybridnde run`` would simulate them again)."""
    changed = case.changed_keys(dataset.attrs.get("case_toml", ""), ("time", "initial_condition", "compute"),
                                skip=[("compute", "device")])  # where it ran does not change the data
    if changed:
        log.warning("%s was simulated with other settings than this case's: %s; training uses the file as it is",
                    path, "; ".join(changed))
    earlier = _earlier_numerics(dataset)
    if earlier:
        log.warning("%s was simulated by an earlier hybridnde, which differs in %s; training uses the file as it "
                    "is (`hybridnde simulate` makes it again)", path, "; ".join(earlier))


def _earlier_numerics(dataset) -> list[str]:
    """``CaseConfig.changed_numerics`` of the case a truth file stores, when the file's recorded checksum
    is the one an earlier hybridnde gave that case (``[]`` otherwise, and for files that store none)."""
    from .config import ConfigError, parse_case_text
    from .simulate import SIMULATION_SECTIONS

    try:
        stored = parse_case_text(str(dataset.attrs.get("case_toml", "")), source="the file's case_toml")
    except ConfigError:
        return []
    recorded = str(dataset.attrs.get("config_checksum", ""))
    return stored.changed_numerics() if recorded and recorded != stored.checksum(SIMULATION_SECTIONS) else []


def _check_state(dataset, case: CaseConfig, path: Path) -> None:
    from solvers import ODE_SYSTEMS

    u = dataset["u"]
    if isinstance(case.system, KuramotoSivashinskyConfig):
        if u.dims != ("member", "time", "x"):
            raise DataError(f"{path}: u has dims {u.dims}; a Kuramoto-Sivashinsky case needs u(member, time, x)")
        if u.sizes["x"] != case.system.n_points:
            raise DataError(f"{path}: the data have {u.sizes['x']} grid points; the case's system.n_points is "
                            f"{case.system.n_points} (the truth grid; hybrid.system.n_points sets the host grid)")
        check_domain_length(dataset, case.system.domain_length, path, "the case's system.domain_length =")
        return
    names = tuple(ODE_SYSTEMS[case.system.name].component_names)
    if u.dims != ("member", "time", "component"):
        raise DataError(f"{path}: u has dims {u.dims}; the {case.system.name} case needs u(member, time, component)")
    found = tuple(str(c) for c in dataset["component"].values)
    if found != names:
        raise DataError(f"{path}: components {found}; {case.system.name} has {names}")


def _check_times(dataset, case: CaseConfig, path: Path, needed: int) -> float:
    times = np.asarray(dataset["time"].values, dtype=np.float64)
    if len(times) < needed:
        raise DataError(f"{path}: {len(times)} samples per member; training windows need {needed} consecutive "
                        "samples (lower training.rollout_steps / validation_rollout_steps or simulate longer)")
    steps = np.diff(times)
    expected = case.time.sample_interval
    if not np.allclose(steps, expected, rtol=1e-6, atol=1e-12):
        raise DataError(f"{path}: samples are {steps.min():.6g}..{steps.max():.6g} apart; the case's "
                        f"time.dt * time.save_every = {expected:.6g}; they must agree (the host steps between samples)")
    return float(expected)


def load_training_data(path: str | Path, case: CaseConfig, *, window_length: int,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> TrainingData:
    """Read, check and split a truth file for training the case's closure.

    ``window_length`` is the longest window the trainer will cut (rollout steps + 1, at least 3 for
    the finite-difference regularizer). ``DataError`` names the file and the mismatch.
    """
    path = Path(path)
    dataset = open_trajectories(path)
    _check_state(dataset, case, path)
    _check_system(dataset, case, path)
    sample_interval = _check_times(dataset, case, path, window_length)
    _warn_other_simulation(dataset, case, path)
    members = np.asarray(dataset["member"].values)
    u = np.asarray(dataset["u"].values, dtype=np.float64)
    bad = np.asarray(dataset["status"].values) != STATUS_FLAGS["ok"] if "status" in dataset else \
        np.zeros(len(members), dtype=bool)
    if bad.any():
        log.warning("%s: %d member(s) did not finish ok; their non-finite samples are left out",
                    path, int(bad.sum()))
    unmarked = ~bad & ~np.isfinite(u.reshape(len(members), -1)).all(axis=1)
    if unmarked.any():  # (another tool's file, or a status edited): said as for the marked ones
        log.warning("%s: member(s) %s hold non-finite samples though marked ok (or unmarked); those samples are "
                    "left out", path, [int(m) for m in members[unmarked]][:10])
    host = case.host_system
    if isinstance(host, KuramotoSivashinskyConfig) and host.n_points != u.shape[-1]:
        u = restrict_to_grid(u, host.n_points)  # sub-grid closure: the filtered truth is the target
    train_rows, validation_rows = split_members(np.arange(len(members)), case.training.validation_fraction)
    if len(train_rows) == 0:
        raise DataError(f"{path}: no members to train on")
    if len(validation_rows) == 0:
        why = ("one member only" if len(members) == 1 else
               f"training.validation_fraction = {case.training.validation_fraction:g} holds no member out")
        log.warning("%s: %s; validation (and early stopping) uses the training members", path, why)
        validation_rows = train_rows
    as_tensor = dict(device=device, dtype=dtype)
    return TrainingData(
        train=torch.as_tensor(u[train_rows], **as_tensor), validation=torch.as_tensor(u[validation_rows], **as_tensor),
        train_members=tuple(int(m) for m in members[train_rows]),
        validation_members=tuple(int(m) for m in members[validation_rows]),
        sample_interval=sample_interval, path=str(path), checksum=data_checksum(path), attrs=dict(dataset.attrs),
        start_time=float(dataset["time"].values[0]))


@torch.no_grad()
def normalization_statistics(trajectories: Tensor, known_rhs, sample_interval: float, *,
                             per_component: bool, max_states: int = 100_000) -> dict[str, Tensor]:
    """Input and output statistics for ``set_normalization`` of a closure.

    Inputs: mean and standard deviation of the states. Outputs: those of the closure's target,
    ``du/dt - F_known(u)``, with ``du/dt`` from second-order central differences of the samples
    (``known_rhs(t, u)`` is the host's known physics; zero for a plain neural ODE).

    ``trajectories: (member, time, *state)``; ``per_component``: statistics per state component
    (MLP) or one scalar each (translation-equivariant CNN). At most ``max_states`` evenly spaced
    states enter (the statistics only set scales).
    """
    if trajectories.shape[1] < 3:
        raise ValueError("need at least 3 samples per member for central differences")
    centre = trajectories[:, 1:-1].reshape(-1, *trajectories.shape[2:])
    du_dt = ((trajectories[:, 2:] - trajectories[:, :-2]) / (2.0 * sample_interval)).reshape_as(centre)
    finite = torch.isfinite(centre.reshape(len(centre), -1)).all(-1) & torch.isfinite(du_dt.reshape(len(centre), -1)).all(-1)
    centre, du_dt = centre[finite], du_dt[finite]
    if len(centre) > max_states:
        # float32 rounds the last index past the end from 2**24 states on; below, its picks are kept (they
        # set the normalisation of every closure trained so far)
        exact = torch.float64 if len(centre) >= 2 ** 24 else torch.float32
        keep = torch.linspace(0, len(centre) - 1, max_states, dtype=exact, device=centre.device).long()
        centre, du_dt = centre[keep], du_dt[keep]
    time = torch.zeros((), dtype=centre.dtype, device=centre.device)
    target = du_dt - known_rhs(time, centre)
    dims = (0,) if per_component else tuple(range(centre.ndim))

    def moments(x: Tensor) -> tuple[Tensor, Tensor]:
        mean = x.mean(dim=dims)
        # one state has no spread (std: NaN, and every closure output NaN): scale 1 there
        scale = x.std(dim=dims) if x.shape[0] > 1 else torch.ones_like(mean)
        return mean.reshape(-1), scale.reshape(-1)

    input_shift, input_scale = moments(centre)
    output_shift, output_scale = moments(target)
    return {"input_shift": input_shift, "input_scale": input_scale, "output_shift": output_shift,
            "output_scale": output_scale}
