"""Pair a rollout file with its reference: common members, common times, one grid.

The rules, in the order they are applied:

* **State**: both files hold fields ``u(member, time, x)`` or both ODE states
  ``u(member, time, component)``, dimensions in that order; components are matched by name (the
  reference is reordered).
* **Grid**: fields on different grids are compared on the coarser one; the finer file is filtered
  onto it with ``grids.restrict_to_grid`` (spectral truncation, the filter that defines a sub-grid
  closure's target). The coarse point count must divide the fine one, the domain lengths agree and
  the coarse points are points of the fine grid (to 1e-3 of a cell).
* **Members**: ``match_members="coordinate"`` (default) pairs rollout member ``i`` with the
  reference member whose ``member`` coordinate (the global member index) is ``i``: every rollout
  member must be in the reference. ``"index"`` pairs them by position (the k-th with the k-th), for
  files whose member numbering differs on purpose.
* **Times**: in the same units (where both files name them); a rollout time is kept when a reference
  time lies within ``time_tolerance`` of it
  (default: 1e-6 of the smaller sampling interval, or the time coordinates' own precision where that
  is coarser -- a float32 coordinate rounds t = 100 by 4e-6); at least two common times are needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import DataError, reading_data_of

__all__ = ["AlignedPair", "align_trajectories", "MEMBER_MATCHING"]

MEMBER_MATCHING = ("coordinate", "index")


@dataclass(frozen=True)
class AlignedPair:
    """A rollout and its reference on common members, times and grid.

    ``predicted``, ``truth``: (member, time, *state); ``times``: (time,) absolute; ``members``: the
    rollout's global member indices and ``reference_members`` the ones paired with them;
    ``status``, ``blowup_time``: the rollout's, per member; ``reference_initial``: the reference's
    states at the first common time on its own grid, (member, *state_reference); ``precision``: the
    coarser machine epsilon of the two files' ``u`` (float32 files: their round-off is not a signal).
    """

    times: np.ndarray
    predicted: np.ndarray
    truth: np.ndarray
    members: np.ndarray
    reference_members: np.ndarray
    status: np.ndarray
    blowup_time: np.ndarray
    state_dim: str
    state_coords: np.ndarray
    reference_initial: np.ndarray
    time_units: str = "1"
    domain_length: float | None = None
    notes: tuple[str, ...] = ()
    precision: float = float(np.finfo(np.float64).eps)


def _domain_length(x: np.ndarray) -> float | None:
    return float(x.size * (x[1] - x[0])) if x.size > 1 else None


def _common_times(rollout_times: np.ndarray, reference_times: np.ndarray, tolerance: float | None,
                  names: tuple[str, str], precision: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(into rollout, into reference)`` of the times that agree within ``tolerance``;
    ``precision``: the coarser coordinate's rounding at the largest time (the default tolerance's floor)."""
    for times, name in zip((rollout_times, reference_times), names):
        if times.size > 1 and not np.all(np.diff(times) > 0):
            raise DataError(f"{name}: the time coordinate is not increasing")
    if tolerance is None:
        spacings = [np.min(np.diff(t)) for t in (rollout_times, reference_times) if t.size > 1]
        tolerance = 1e-6 * min(spacings) if spacings else 1e-9 * max(1.0, float(np.abs(rollout_times).max()))
        # a float32 coordinate is off by up to half its spacing there, both files' errors adding up: 4 of
        # them (1001 times 0.1 apart in float32 kept 249 at 1e-6 dt, a review found)
        tolerance = max(tolerance, 4 * precision)
        if spacings and tolerance >= 0.5 * min(spacings):  # then a time half a sample off would pair too
            raise DataError(f"{names[0]} and {names[1]}: a time coordinate rounds by up to {precision:.3g} at the "
                            f"largest time, too coarse to pair samples {min(spacings):.3g} apart",
                            "store time in float64 (or offset it to start near 0), or pass --time-tolerance")
    position = np.clip(np.searchsorted(reference_times, rollout_times), 1, max(reference_times.size - 1, 1))
    candidates = np.stack([position - 1, np.minimum(position, reference_times.size - 1)])
    distance = np.abs(reference_times[candidates] - rollout_times[None, :])
    nearest = candidates[np.argmin(distance, axis=0), np.arange(rollout_times.size)]
    keep = np.abs(reference_times[nearest] - rollout_times) <= tolerance
    if keep.sum() < 2:
        def describe(t: np.ndarray) -> str:
            step = f", step {t[1] - t[0]:.6g}" if t.size > 1 else ""
            return f"[{t[0]:.6g} .. {t[-1]:.6g}]{step}"
        raise DataError(f"{names[0]} and {names[1]} share {int(keep.sum())} time(s) within {tolerance:.3g}; need at "
                        f"least 2 (rollout times {describe(rollout_times)}, reference times "
                        f"{describe(reference_times)}); simulate the reference over the rollout's times")
    return np.flatnonzero(keep), nearest[keep]


def _check_same_states(state_dim: str, state_coords: np.ndarray, reference_coords: np.ndarray,
                       names: tuple[str, str]) -> float | None:
    """``DataError`` unless both files hold the same state variables (ODE components by name) or fields
    on one domain whose point counts divide; returns the field's domain length (``None`` for ODEs)."""
    from .grids import point_tolerance  # (grids imports torch, which `hybridnde --help` must not)

    if state_dim == "component":
        rollout_names, reference_names = [str(c) for c in state_coords], [str(c) for c in reference_coords]
        if sorted(rollout_names) != sorted(reference_names):
            raise DataError(f"{names[0]} has components {rollout_names}, {names[1]} {reference_names}; "
                            "they must name the same state variables")
        return None
    domain_length, reference_length = _domain_length(state_coords), _domain_length(reference_coords)
    if domain_length and reference_length and abs(domain_length - reference_length) > 1e-6 * reference_length:
        raise DataError(f"{names[0]} covers a domain of length {domain_length:.6g}, {names[1]} "
                        f"{reference_length:.6g}; they must be the same domain")
    n_rollout, n_reference = state_coords.size, reference_coords.size
    if max(n_rollout, n_reference) % min(n_rollout, n_reference):
        raise DataError(f"{names[0]} has {n_rollout} grid points and {names[1]} {n_reference}; one must "
                        "divide the other to compare them on the coarser grid")
    # the coarse points must be every ratio-th fine point: a shifted grid (cell centres against cell
    # edges, say) would compare fields displaced by a fraction of a cell
    (coarse, coarse_name), (fine, fine_name) = sorted(((np.asarray(state_coords, dtype=np.float64), names[0]),
                                                       (np.asarray(reference_coords, dtype=np.float64), names[1])),
                                                      key=lambda pair: pair[0].size)
    spacing = (domain_length or reference_length or 1.0) / coarse.size
    offset = np.abs(fine[:: fine.size // coarse.size] - coarse).max(initial=0.0)
    if offset > point_tolerance(coarse.size, spacing * coarse.size):
        raise DataError(f"the grid points of {coarse_name} are not points of {fine_name}'s grid (x differs by up "
                        f"to {offset:.3g}, {offset / spacing:.3g} of a cell): both must start at the same x; "
                        "interpolate one file onto the other's grid first")
    return domain_length


def _member_pairs(rollout_members: np.ndarray, reference_members: np.ndarray, match_members: str,
                  names: tuple[str, str]) -> np.ndarray:
    """Index into the reference of the member paired with each rollout member."""
    if match_members == "index":
        if reference_members.size < rollout_members.size:
            raise DataError(f"{names[1]} has {reference_members.size} members, {names[0]} {rollout_members.size}; "
                            "with member matching by index the reference needs at least as many")
        return np.arange(rollout_members.size)
    lookup = {int(member): index for index, member in enumerate(reference_members)}
    missing = [int(m) for m in rollout_members if int(m) not in lookup]
    if missing:
        by_position = (", or pair members by position with match_members='index' (--match-members index)"
                       if reference_members.size >= rollout_members.size else "")  # (which needs as many)
        raise DataError(f"{names[1]} lacks members {missing[:8]}{' ...' if len(missing) > 8 else ''} of {names[0]} "
                        f"(it has {reference_members.min()}..{reference_members.max()}); simulate them{by_position}")
    return np.array([lookup[int(m)] for m in rollout_members], dtype=np.int64)


def align_trajectories(rollout, reference, *, match_members: Literal["coordinate", "index"] = "coordinate",
                       time_tolerance: float | None = None, names: tuple[str, str] = ("rollout", "reference"),
                       ) -> AlignedPair:
    """Pair two datasets in the hybridnde schema (module docstring); ``DataError`` names the mismatch.

    Args:
        rollout, reference: ``xarray.Dataset``s with ``u(member, time, x|component)``.
        names: how the two appear in error messages (e.g. their file names).
    """
    if match_members not in MEMBER_MATCHING:
        raise DataError(f"match_members={match_members!r}: choose one of {MEMBER_MATCHING}")
    notes: list[str] = []
    u_rollout, u_reference = rollout["u"], reference["u"]
    if (u_rollout.ndim != 3 or u_reference.ndim != 3 or u_rollout.dims[2] != u_reference.dims[2]
            or u_rollout.dims[:2] != ("member", "time") or u_reference.dims[:2] != ("member", "time")):
        raise DataError(f"{names[0]} has u{u_rollout.dims} and {names[1]} u{u_reference.dims}; both must be "
                        "u(member, time, x) or both u(member, time, component), in that order "
                        "(dataset.transpose('member', 'time', ...) puts them so)")
    state_dim = u_rollout.dims[2]
    for name, dataset in zip(names, (rollout, reference)):
        if state_dim == "x" and "x" not in dataset.coords:  # (xarray would number the points 0, 1, ...)
            raise DataError(f"{name}: u(member, time, x) without an x coordinate, the grid points; add it "
                            "(xarray: ds.assign_coords(x=np.arange(N) * L / N))")
    state_coords = np.asarray(rollout[state_dim].values)
    reference_coords = np.asarray(reference[state_dim].values)
    # what the states are is checked first: files of two systems differ there, not only in members
    domain_length = _check_same_states(state_dim, state_coords, reference_coords, names)
    member_index = _member_pairs(np.asarray(rollout["member"].values), np.asarray(reference["member"].values),
                                 match_members, names)
    unlabelled = [name for name, dataset in zip(names, (rollout, reference)) if "member" not in dataset.coords]
    if unlabelled and match_members == "coordinate":  # xarray numbers them 0, 1, ...: a pairing by position
        notes.append(f"{' and '.join(unlabelled)} without a member coordinate: members taken as 0, 1, ... (paired by "
                     "position)")
    units = [str(dataset["time"].attrs["units"]) if "units" in dataset["time"].attrs else None
             for dataset in (rollout, reference)]
    if None not in units and units[0] != units[1]:  # (times in "s" paired with times in "ms" would mis-pair)
        raise DataError(f"{names[0]} has its time in {units[0]!r}, {names[1]} in {units[1]!r}; give both files the "
                        "same time units")
    rollout_times = np.asarray(rollout["time"].values, dtype=np.float64)
    reference_times = np.asarray(reference["time"].values, dtype=np.float64)
    largest = max(float(np.abs(rollout_times).max(initial=0.0)), float(np.abs(reference_times).max(initial=0.0)))
    precision = max(float(np.spacing(np.asarray(largest, dtype=dataset["time"].dtype)))
                    if np.issubdtype(dataset["time"].dtype, np.floating) else 0.0
                    for dataset in (rollout, reference))
    rollout_index, reference_index = _common_times(rollout_times, reference_times, time_tolerance, names,
                                                   precision)
    if rollout_index.size < rollout_times.size:
        notes.append(f"{rollout_index.size} of the rollout's {rollout_times.size} times have a reference time")

    with reading_data_of(names[1]):  # (files are opened lazily: only what is paired is read, here)
        selection = u_reference.isel(member=member_index)
        reference_initial = np.asarray(selection.isel(time=int(reference_index[0])).values, dtype=np.float64)
        truth = np.asarray(selection.isel(time=reference_index).values, dtype=np.float64)
        reference_ok = (np.asarray(reference["status"].values)[member_index] == 0).all() if "status" in reference \
            else True
    with reading_data_of(names[0]):
        predicted = np.asarray(u_rollout.isel(time=rollout_index).values, dtype=np.float64)
        status = np.asarray(rollout["status"].values if "status" in rollout else np.zeros(predicted.shape[0]),
                            dtype=np.int8)
        blowup_time = np.asarray(rollout["blowup_time"].values if "blowup_time" in rollout
                                 else np.full(predicted.shape[0], np.nan), dtype=np.float64)
    if state_dim == "component":
        rollout_names, reference_names = [str(c) for c in state_coords], [str(c) for c in reference_coords]
        order = [reference_names.index(name) for name in rollout_names]
        truth, reference_initial = truth[..., order], reference_initial[..., order]
    else:
        n_rollout, n_reference = predicted.shape[-1], truth.shape[-1]
        if n_rollout != n_reference:
            # grids imports torch: imported where a grid is restricted, not when the CLI starts
            from .grids import restrict_to_grid

            if n_rollout < n_reference:
                truth = restrict_to_grid(truth, n_rollout)
                notes.append(f"reference restricted spectrally from {n_reference} to the rollout's {n_rollout} points")
            else:
                predicted = restrict_to_grid(predicted, n_reference)
                state_coords = reference_coords
                notes.append(f"rollout restricted spectrally from {n_rollout} to the reference's {n_reference} points")
    if not reference_ok:
        notes.append("some reference members are not ok (status != 0); their errors are undefined after blow-up")
    return AlignedPair(
        times=rollout_times[rollout_index], predicted=predicted, truth=truth,
        members=np.asarray(rollout["member"].values), reference_members=np.asarray(reference["member"].values)[member_index],
        status=status, blowup_time=blowup_time, state_dim=state_dim, state_coords=state_coords,
        reference_initial=reference_initial, time_units=str(rollout["time"].attrs.get("units", "1")),
        domain_length=domain_length, notes=tuple(notes),
        precision=max(float(np.finfo(u.dtype).eps) if np.issubdtype(u.dtype, np.floating) else 0.0
                      for u in (u_rollout, u_reference)))
