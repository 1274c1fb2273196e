"""What ``hybridnde run`` checks before its first stage starts: every variant's configuration and
input files as the stages would read them, the device, thread counts, memory for the simulations,
an output folder that holds another case's run, and the free disk space (a warning).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from ..config import CaseConfig, ConfigError
from ..io import DataError, warn_if_disk_short
from . import stages
from .variants import Variant

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["check_variants"]


def check_variants(variants: Sequence[Variant], directory: Path) -> None:
    """Everything the stages would refuse, checked before the first one starts (``ConfigError``,
    ``DataError``), input files read as the stages read them."""
    from ..initial_conditions import draw_initial_conditions
    from ..rollout_inputs import initial_states
    from ..config.physics import ADAPTIVE_INTEGRATORS
    from ..simulate import IN_MEMORY_COPIES, check_fits_in_memory
    from ..systems import build_host_solver, build_solver, resolve_device
    from ..threads import check_thread_count
    from ..training import window_lengths
    from ..training.assembly import check_training_config

    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--out {directory}: exists and is not a directory; give a folder for the run's files")
    _check_not_another_case(variants, directory)
    for variant in variants:
        case = variant.case
        try:
            resolve_device(case.compute.device)  # a missing GPU is said before the first stage, not after it
            check_thread_count(case.rollout.threads, "rollout.threads")
            # fixed-step simulations stream to their files (adaptive ones solve in memory: IN_MEMORY_COPIES
            # trajectories), but training holds the truth, the evaluation the reference
            adaptive = case.time.integrator in ADAPTIVE_INTEGRATORS
            copies = IN_MEMORY_COPIES if adaptive else 1
            check_fits_in_memory(case, what="the simulation" if adaptive else "training", copies=copies,
                                 fix="lower initial_condition.members or time.n_steps, or raise time.save_every")
            if case.rollout.initial_conditions == "draw":  # (a file given: no reference is simulated)
                check_fits_in_memory(stages.reference_case(case), what="the evaluation against the held-out reference "
                                     "(rollout.members x rollout.steps / hybrid.substeps samples)", copies=copies,
                                     fix="lower rollout.members or rollout.steps")
            check_training_config(case)
            try:
                truth_solver = build_solver(case.system, case.time)
            except ValueError as error:
                raise ConfigError(f"[system]/[time]: the true system cannot be built ({error})") from None
            samples = case.time.n_steps // case.time.save_every + 1
            needed = max(window_lengths(case))
            if samples < needed:
                raise ConfigError(f"time.n_steps = {case.time.n_steps} gives {samples} samples per member; a training "
                                  f"window needs {needed} (training.rollout_steps + 1): raise time.n_steps or lower "
                                  "training.rollout_steps")
            _check_common_times(case)
            ic = case.initial_condition  # files read as the stages read them: there, enough members, finite
            if ic.distribution == "file":
                draw_initial_conditions(ic, truth_solver, range(ic.members))
            if case.rollout.initial_conditions != "draw":
                initial_states(case, build_host_solver(case), range(case.rollout.members))
                _check_reference_system(case, Path(case.rollout.initial_conditions))
        except (ConfigError, DataError) as error:
            raise type(error)(f"variant {variant.label}: {error}" if variant.label else str(error)) from None
    warn_if_disk_short(directory / "truth.nc", _run_bytes([variant.case for variant in variants]), "the run")


def _check_reference_system(case: CaseConfig, reference: Path) -> None:
    """A given ``rollout.initial_conditions`` is also the reference the rollouts are scored against:
    one simulated for another true system is refused now, as the evaluate stage would at the end."""
    import netCDF4

    from ..evaluation_case import case_from_attributes, system_differences

    with netCDF4.Dataset(reference) as dataset:
        attributes = {name: dataset.getncattr(name) for name in dataset.ncattrs()}
    stored = case_from_attributes(attributes, str(reference), quiet=True)
    if stored is not None and stored.system.name == case.system.name:
        differing = system_differences(case, stored)
        if differing:
            raise DataError(f"rollout.initial_conditions = {str(reference)!r} was simulated for another system, "
                            f"and it is the reference the rollouts are scored against: {'; '.join(differing)} "
                            "(file -> case); give a truth of this case's [system]")


def _run_bytes(cases: Sequence[CaseConfig]) -> int:
    """An upper bound of what a run's NetCDF files hold before compression: a truth and a reference per
    distinct configuration (variants share them), a rollout and a baseline per variant (each as many
    samples as its reference, in float64), whether or not they are up to date already."""
    from ..simulate import SIMULATION_SECTIONS, trajectory_bytes

    truths, references, rollouts = {}, {}, 0
    for case in cases:
        reference = trajectory_bytes(stages.reference_case(case))
        truths[case.checksum(SIMULATION_SECTIONS)] = trajectory_bytes(case)
        references[case.checksum(stages.STAGE_SECTIONS["reference"])] = reference
        rollouts += 2 * reference
    return sum(truths.values()) + sum(references.values()) + rollouts


def _check_not_another_case(variants: Sequence[Variant], directory: Path) -> None:
    """``ConfigError`` when ``directory`` (or a variant's folder in it) holds the truth of a case by
    another name: its outputs would be replaced one stage at a time, and those this case does not make
    would stay beside them. Only the run's own folders are looked at, not the tree below them."""
    if not directory.is_dir():
        return
    names = {variant.case.case.name for variant in variants}
    for truth in [directory / "truth.nc", *sorted(directory.glob("*/truth.nc"))[:32]]:
        found = _case_of(truth)
        if found is not None and found not in names:
            raise ConfigError(f"--out {directory}: holds the run of another case ({truth} is of case {found!r}, this "
                              f"is {min(names)!r}); its outputs would be replaced: give another --out, or delete "
                              f"{truth.parent}")


def _case_of(truth: Path) -> str | None:
    """``[case] name`` of the case a truth file records (``None``: no file, or it records none)."""
    if not truth.is_file():
        return None
    try:
        import netCDF4

        with netCDF4.Dataset(truth) as dataset:
            text = str(dataset.getncattr("case_toml")) if "case_toml" in dataset.ncattrs() else ""
        return str(tomllib.loads(text)["case"]["name"]) if text else None
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return None


def _check_common_times(case: CaseConfig) -> None:
    """The rollout saves every ``rollout.save_every`` host steps, the reference every ``substeps``:
    they must share a time after the start, or there is nothing to compare."""
    save_every, substeps = case.rollout.save_every, case.hybrid.substeps
    first_common = save_every * substeps // math.gcd(save_every, substeps)
    if first_common > case.rollout.steps:
        raise ConfigError(f"rollout.save_every = {save_every} with hybrid.substeps = {substeps}: the rollout saves no "
                          f"state at a data sample within rollout.steps = {case.rollout.steps}; make rollout.save_every "
                          "a multiple of hybrid.substeps")
