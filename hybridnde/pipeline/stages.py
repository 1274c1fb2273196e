"""The stages of ``hybridnde run`` and how each one knows that its output is up to date.

| stage     | output          | made by                                   | up to date when its metadata records     |
|-----------|-----------------|-------------------------------------------|------------------------------------------|
| simulate  | truth.nc        | ``simulate_to_file`` (training data)      | ``case.checksum(SIMULATION_SECTIONS)``   |
| reference | reference.nc    | the same, of ``reference_case``           | the reference case's simulation checksum |
| train     | closure.pt      | ``train_case`` on truth.nc                | ``training_checksum(case)``              |
| rollout   | rollout.nc      | ``run_rollout`` from reference.nc's start | ``rollout_checksum`` + closure checksum  |
| baseline  | baseline.nc     | ``run_rollout`` of the bare host solver   | ``rollout_checksum`` + ``"none"``        |
| evaluate  | metrics.json    | ``evaluate_files`` against reference.nc   | a checksum of ``[evaluate]`` and inputs  |

The held-out reference is the truth over the rollout's horizon from the rollout's own initial states:
the case's true system, ``rollout.members`` members drawn with ``rollout.seed`` (other states than the
training data's, same spin-up onto the attractor), ``ceil(rollout.steps / hybrid.substeps)`` samples.
The rollouts then start from its first states (``rollout.initial_conditions`` = its path), so hybrid,
bare host and truth start from the same states and are compared over the same times. With
``initial_condition.distribution = "point"`` every draw is the training start: one member, not held out.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from ..config import CaseConfig
from ..rollout_resume import ROLLOUT_SECTIONS, rollout_checksum
from ..simulate import SIMULATION_SECTIONS
from ..training import TRAINING_SECTIONS, training_checksum

__all__ = ["STAGE_SECTIONS", "STAGES", "reference_case", "rollout_case", "reference_members", "repeats_training_start", "has_baseline", "netcdf_identity", "recorded_input",
           "closure_identity", "json_identity", "recorded_run", "evaluation_checksum", "simulate", "recorded_seconds",
           "EVALUATION_VERSION"]

log = logging.getLogger(__name__)

#: the stages in order (``report`` follows and is always rewritten: it is cheap)
STAGES = ("simulate", "reference", "train", "rollout", "baseline", "evaluate")


def _union(*groups) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


#: the case sections each stage's output depends on; ``None``: every section (the variant's own)
STAGE_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "simulate": SIMULATION_SECTIONS,
    "reference": _union(SIMULATION_SECTIONS, ("hybrid", "rollout")),
    "train": TRAINING_SECTIONS,
    "rollout": _union(TRAINING_SECTIONS, ROLLOUT_SECTIONS),
    "baseline": ROLLOUT_SECTIONS,
    "evaluate": None,
}

#: bump when metrics.json's content changes meaning, so old files are recomputed
EVALUATION_VERSION = 8  # 2: members_from_training_states; 3: resting_members, resting_while_valid;
# 4: training states found up to rounding, not bit for bit; 5: statistics undefined below half finite
# states and over the truth's same samples, VPT censored where the truth ends, spectrum gaps counted;
# 6: a VPT crossing after undefined truth samples is interpolated from the last defined one;
# 7: mean_drift (fields), spectrum.compared_modes, kl_divergence.bins and .epsilon; 8: mean_drift over
# each member's finite times (a member that blew up counted until it did)


def reference_samples(case: CaseConfig) -> int:
    """Data samples covering the rollout's horizon (``rollout.steps`` host steps of
    ``sample_interval / hybrid.substeps``)."""
    return math.ceil(case.rollout.steps / case.hybrid.substeps)


def repeats_training_start(case: CaseConfig) -> bool:
    """Whether the reference the pipeline draws is the training trajectory's own start: with
    ``initial_condition.distribution = "point"`` every draw is that point, so there is no held-out state
    and the score is an extrapolation test of the one trajectory."""
    return case.rollout.initial_conditions == "draw" and case.initial_condition.distribution == "point"


def reference_members(case: CaseConfig) -> int:
    """Members of the drawn reference and of the rollouts from it: ``rollout.members``, or 1 where they
    would all start from the one point (``repeats_training_start``): copies of one deterministic
    trajectory would only repeat it, and a median over them would pass for an ensemble's."""
    return 1 if repeats_training_start(case) else case.rollout.members


def reference_case(case: CaseConfig) -> CaseConfig:
    """The case whose simulation is the held-out truth of the rollout (see the module docstring)."""
    time = dataclasses.replace(case.time, n_steps=reference_samples(case) * case.time.save_every)
    initial = dataclasses.replace(case.initial_condition, members=reference_members(case), seed=case.rollout.seed)
    return case.replace(time=time, initial_condition=initial)


def rollout_case(case: CaseConfig, reference_path: Path) -> CaseConfig:
    """The case rolled out: its members start from the first states of ``reference_path``."""
    return case.replace(rollout=dataclasses.replace(case.rollout, initial_conditions=str(reference_path),
                                                    members=reference_members(case)))


def has_baseline(case: CaseConfig) -> bool:
    """A bare-host baseline means something when the host knows some physics (not a neural ODE)."""
    return case.hybrid.setup != "neural_ode"


def simulate(case: CaseConfig, out: Path, *, progress: bool | None, resume: bool = False, threads: int = 1) -> None:
    from ..simulation_job import simulate_to_file

    simulate_to_file(case, out, resume=resume, progress=progress, threads_setting=threads, resume_hint=False)


def _attributes(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    import netCDF4

    try:
        with netCDF4.Dataset(path) as dataset:
            return {name: dataset.getncattr(name) for name in dataset.ncattrs()}
    except OSError as error:
        log.warning("%s is unreadable (%s); it is made again", path, error)
        return None


def netcdf_identity(path: Path, *, with_closure: bool = False) -> str | None:
    """What a NetCDF output records: its ``config_checksum`` (and ``closure_checksum``)."""
    attributes = _attributes(path)
    if attributes is None or "config_checksum" not in attributes:
        return None
    identity = str(attributes["config_checksum"])
    return f"{identity}:{attributes.get('closure_checksum', '')}" if with_closure else identity


def recorded_run(path: Path) -> str:
    """The ``run_id`` a rollout file records of the run that made it (kept by a resume; ``""`` if none):
    a rollout made again with the same identity is another file, whose metrics are computed again."""
    return str((_attributes(path) or {}).get("run_id", ""))


def recorded_input(path: Path) -> str | None:
    """The checksum a rollout file keeps of the initial-conditions file it started from, if any."""
    return (_attributes(path) or {}).get("initial_conditions_sha256") or None


def closure_identity(path: Path) -> tuple[str | None, dict[str, Any] | None]:
    """``(config checksum the closure was trained with, its payload)``, or ``(None, None)``."""
    if not path.is_file():
        return None, None
    from ..closure_file import load_closure
    from ..io import DataError

    try:
        _, payload = load_closure(path)
    except DataError as error:
        log.warning("%s; it is trained again", error)
        return None, None
    return str(payload.get("metadata", {}).get("config_checksum", "")), payload


def json_identity(path: Path) -> str | None:
    """The ``pipeline.checksum`` recorded in a metrics file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("pipeline", {}).get("checksum")
    except (OSError, ValueError, AttributeError):
        return None


def evaluation_checksum(case: CaseConfig, inputs: dict[str, str | None], *, lyapunov: bool) -> str:
    """SHA-256 of what the metrics depend on: ``[evaluate]``, the inputs' identities, the options."""
    text = json.dumps({"evaluate": case.checksum(("evaluate",)), "inputs": inputs, "lyapunov": lyapunov,
                       "version": EVALUATION_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_seconds(stage: str, path: Path, payload: dict[str, Any] | None = None) -> float | None:
    """The wall time an output records of its own making (``wall_seconds``), when it does."""
    if stage == "train":
        value = (payload or {}).get("metadata", {}).get("wall_seconds")
    elif stage == "evaluate":
        return None
    else:
        value = (_attributes(path) or {}).get("wall_seconds")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def expected_identities(case: CaseConfig, reference_path: Path) -> dict[str, str]:
    """The identities the simulate/reference/train outputs must record to be reused."""
    return {"simulate": case.checksum(SIMULATION_SECTIONS),
            "reference": reference_case(case).checksum(SIMULATION_SECTIONS),
            "train": training_checksum(case),
            "rollout": rollout_checksum(rollout_case(case, reference_path))}
