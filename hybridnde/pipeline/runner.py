"""Run the stages of every variant into one directory, reusing what is up to date.

``run_pipeline(variants, directory)`` checks every variant first (``checks.check_variants``:
``ConfigError`` before anything is written), then for each variant runs simulate -> reference -> train -> rollout -> baseline ->
evaluate and writes its report. A stage whose output records the expected checksum is reused; one
that started with the same checksum and did not finish resumes from its checkpoint (training,
rollouts); anything else is made afresh.
"""
from __future__ import annotations

import json
import logging
import time as wallclock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import CaseConfig
from ..evaluation_figures import EVALUATION_FIGURES, publish_evaluation
from ..io import DataError
from ..output_paths import staging_folder
from ..threads import torch_threads
from . import stages
from .checks import check_variants
from .inputs import InputChecks
from .plots import error_growth_comparison_figure, held_out_validation, read_training_log, training_curves_figure
from .record import RunRecord
from .variants import Variant

__all__ = ["run_pipeline", "check_variants", "StageResult", "VariantResult", "RunResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """One stage of one variant: ``action`` is ``ran``, ``reused`` (up to date from an earlier run) or
    ``shared`` (made for an earlier variant of this run); ``seconds``: its wall time when it ran."""

    stage: str
    path: Path
    action: str
    seconds: float | None


@dataclass
class VariantResult:
    variant: Variant
    directory: Path
    stages: list[StageResult] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    closure_metadata: dict[str, Any] = field(default_factory=dict)
    training_log: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None

    @property
    def case(self) -> CaseConfig:
        return self.variant.case


@dataclass
class RunResult:
    directory: Path
    variants: list[VariantResult]
    comparison: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    #: ``--compare`` variants that failed at run time: ``(label, "ErrorType: message")``; the others ran
    failed: list[tuple[str, str]] = field(default_factory=list)


class _Run(InputChecks):
    """The state of one ``run_pipeline`` call (the record, what was made for earlier variants)."""

    def __init__(self, directory: Path, *, progress: bool | None, lyapunov: bool, command: str, threads: int = 1):
        super().__init__()
        self.directory, self.progress, self.lyapunov, self.command = directory, progress, lyapunov, command
        self.threads = threads
        self.record = RunRecord(directory)
        self.made: dict[Path, StageResult] = {}
        #: the summaries a person reads that the stage about to run makes out of date (written again at
        #: the end): removed first, so that an interrupted run does not leave them beside newer results
        self.summaries: list[Path] = []

    def stage(self, name: str, path: Path, expected: str, found: str | None, run: Callable[[bool], Any], *,
              label: str, payload: dict | None = None, can_resume: bool) -> StageResult:
        """Reuse ``path`` when ``found`` (its recorded identity) is ``expected``, else ``run(resume)`` it:
        ``resume`` when ``can_resume`` (it has a checkpoint) and the record says it was interrupted with
        this identity, or knows nothing of it (one a separate command left)."""
        path = Path(path)
        if path in self.made:
            return StageResult(name, path, "shared", self.made[path].seconds)
        if found == expected:
            seconds = self.record.seconds(path, expected)
            if seconds is None:
                seconds = stages.recorded_seconds(name, path, payload)
            log.info("%s%s: %s is up to date (reused)", label, name, path)
            result = StageResult(name, path, "reused", seconds)
        else:
            if found is not None:
                log.info("%s%s: %s was made with another configuration; making it again", label, name, path)
            # a checkpoint this record knows nothing of (written by `hybridnde train` or `rollout` into the
            # folder) is tried too: the stage refuses one of another set-up, and it is then made afresh
            resume = can_resume and self.record.interrupted_with(path) in (expected, None)
            self.remove_summaries()
            self.record.started(path, name, expected)
            log.info("%s%s -> %s%s", label, name, path, " (resuming)" if resume else "")
            started = wallclock.perf_counter()
            try:
                run(resume)
            except DataError as refusal:  # the checkpoint does not fit (ResumeRefused: e.g. an input file changed
                if not resume:            # under it) or is unreadable: the stage's own restart files cannot be
                    raise                 # trusted, and run has no --resume to drop
                log.warning("%s%s: not resuming (%s); making it afresh", label, name, refusal.problem)
                run(False)
            seconds = wallclock.perf_counter() - started
            self.record.finished(path, name, expected, seconds)
            log.info("%s%s done in %.1f s", label, name, seconds)
            result = StageResult(name, path, "ran", seconds)
        self.made[path] = result
        return result

    def remove_summaries(self) -> None:
        for summary in self.summaries:
            if summary.is_file():
                log.info("removing %s: the results it summarises are being made again", summary)
                summary.unlink()
        self.summaries = []

    # -- one variant --------------------------------------------------------------------------------
    def variant(self, variant: Variant, position: str) -> VariantResult:
        from ..checksums import recorded_data_checksum
        from ..rollout_job import run_rollout
        from ..training import checkpoint_path, log_path, train_case
        from ..netcdf_stream import has_restart_files
        from ..training.build import trained_for

        case = variant.case
        label = f"[{variant.label}] " if variant.label else ""
        label = f"{position}{label}"
        folder = variant.directory(self.directory)
        where = {name: variant.directory(self.directory, sections) for name, sections in stages.STAGE_SECTIONS.items()}
        # a stage the variants share is not labelled as the first one's
        shown = {name: label if where[name] != self.directory else position for name in where}
        truth = where["simulate"] / "truth.nc"
        given_reference = case.rollout.initial_conditions != "draw"
        reference = Path(case.rollout.initial_conditions) if given_reference else where["reference"] / "reference.nc"
        closure = where["train"] / "closure.pt"
        rollout, baseline = where["rollout"] / "rollout.nc", where["baseline"] / "baseline.nc"
        expected = stages.expected_identities(case, reference)
        rolled = stages.rollout_case(case, reference)
        result = VariantResult(variant, folder)
        self.summaries = [folder / "report.md"]
        if variant.label:  # (the sweep's table is written again once every variant has run)
            self.summaries += [self.directory / "compare.md", self.directory / "compare.json"]
        if stages.repeats_training_start(case) and case.rollout.members > 1:
            log.info("%sinitial_condition.distribution = 'point': every member would start from the training "
                     "trajectory's own start, so the reference and the rollouts use 1 member, not rollout.members "
                     "= %d (an extrapolation test, nothing held out)", label, case.rollout.members)

        found = self.simulation_identity(truth, expected["simulate"], case, label=shown["simulate"], name="simulate")
        result.stages.append(self.stage(
            "simulate", truth, expected["simulate"], found, label=shown["simulate"], can_resume=has_restart_files(truth),
            run=lambda resume: stages.simulate(case, truth, progress=self.progress, resume=resume,
                                               threads=self.threads)))
        if not given_reference:
            found = self.simulation_identity(reference, expected["reference"], stages.reference_case(case),
                                             label=shown["reference"], name="reference")
            result.stages.append(self.stage(
                "reference", reference, expected["reference"], found, label=shown["reference"],
                can_resume=has_restart_files(reference),
                run=lambda resume: stages.simulate(stages.reference_case(case), reference, progress=self.progress,
                                                   resume=resume, threads=self.threads)))
        found, payload = stages.closure_identity(closure)
        if found != expected["train"] and trained_for(case, found, (payload or {}).get("case_toml")):
            found = expected["train"]  # recorded before run-only training keys were left out: same closure
        trained_on = recorded_data_checksum((payload or {}).get("metadata", {}).get("data", {}))
        found = self.input_changed(found, expected["train"], trained_on, truth, label=shown["train"], name="train",
                                   output=closure)
        result.stages.append(self.stage(
            "train", closure, expected["train"], found, label=shown["train"], payload=payload,
            can_resume=checkpoint_path(closure).is_file(),
            run=lambda resume: train_case(case, truth, closure, progress=self.progress, resume=resume,
                                           resume_hint=False)))
        _, payload = stages.closure_identity(closure)
        result.closure_metadata = dict(payload["metadata"])
        result.training_log = read_training_log(log_path(closure))
        rollout_expected = f"{expected['rollout']}:{payload['checksum']}"
        legacy = stages.rollout_checksum(rolled, legacy=True)
        found = self.rollout_identity(rollout, rollout_expected, reference, label=shown["rollout"], name="rollout",
                                      legacy=f"{legacy}:{payload['checksum']}")
        result.stages.append(self.stage(
            "rollout", rollout, rollout_expected, found, label=shown["rollout"], can_resume=has_restart_files(rollout),
            run=lambda resume: run_rollout(rolled, rollout, closure_path=closure, resume=resume,
                                           progress=self.progress, resume_hint=False)))
        # truth.nc too: whether the reference is held out is looked up in it (held_out.py)
        # the rollouts by their identity and run (their data checksums would read them whole on every run)
        inputs = {"rollout": f"{rollout_expected}:{stages.recorded_run(rollout)}", "reference": self.checksum(reference),
                  "truth": self.checksum(truth)}
        if stages.has_baseline(case):
            baseline_expected = f"{expected['rollout']}:none"
            found = self.rollout_identity(baseline, baseline_expected, reference, label=shown["baseline"], name="baseline",
                                          legacy=f"{legacy}:none")
            result.stages.append(self.stage(
                "baseline", baseline, baseline_expected, found, can_resume=has_restart_files(baseline),
                label=shown["baseline"], run=lambda resume: run_rollout(
                    rolled, baseline, resume=resume, progress=self.progress, resume_hint=False)))
            inputs["baseline"] = f"{baseline_expected}:{stages.recorded_run(baseline)}"
        metrics_path, figures = folder / "metrics.json", folder / "figures"
        checksum = stages.evaluation_checksum(case, inputs, lyapunov=self.lyapunov)
        found = stages.json_identity(metrics_path)
        if found == checksum and not _figures_present(metrics_path):
            found = None
        result.stages.append(self.stage(
            "evaluate", metrics_path, checksum, found, label=label, can_resume=False,
            run=lambda resume: self.evaluate(result, rollout, reference, baseline, closure, figures,
                                             {"checksum": checksum, "inputs": inputs}, truth=truth)))
        result.metrics = json.loads(metrics_path.read_text())
        from .report import write_report

        result.report = write_report(result, command=self.command)
        return result

    def evaluate(self, result: VariantResult, rollout: Path, reference: Path, baseline: Path, closure: Path,
                 figures: Path, identity: dict[str, Any], *, truth: Path) -> None:
        from ..evaluate import evaluate_files
        from .held_out import members_from_training_states

        case = result.case
        with staging_folder(figures / "figures") as staging:  # replaced as a set with metrics.json (evaluate's)
            metrics = evaluate_files(rollout, reference, case=case, figures_dir=staging, lyapunov=self.lyapunov,
                                     closure_path=closure if self.lyapunov else None)
            scored = metrics["valid_prediction_time"]["members"]  # the members evaluate paired
            metrics["members_from_training_states"] = members_from_training_states(reference, truth, members=scored)
            name = case.case.name + (f" [{result.variant.label}]" if result.variant.label else "")
            drawn = [training_curves_figure(result.training_log, staging / "training_loss.png",
                                            title=f"{name}: training",
                                            best_epoch=(result.closure_metadata or {}).get("best_epoch"),
                                            held_out=held_out_validation(result.closure_metadata))]
            if stages.has_baseline(case):
                metrics["baseline"] = evaluate_files(baseline, reference, case=case)
                drawn.append(error_growth_comparison_figure(
                    [("hybrid (trained closure)", metrics), ("bare host solver", metrics["baseline"])],
                    staging / "error_growth_vs_bare_host.png", title=f"{name}: hybrid vs bare host"))
            metrics["pipeline"] = identity
            publish_evaluation(metrics, result.directory / "metrics.json", folder=figures, names=PIPELINE_FIGURES,
                               drawn=[*metrics.get("figures", []), *(path for path in drawn if path is not None)])


#: the figures an evaluation may draw (``figures/<name>.png``): which ones depends on the set-up
PIPELINE_FIGURES = (*EVALUATION_FIGURES, "training_loss", "error_growth_vs_bare_host")


def _figures_present(metrics_path: Path) -> bool:
    try:
        paths = json.loads(metrics_path.read_text()).get("figures", [])
    except (OSError, ValueError):
        return False
    return all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)


def run_pipeline(variants: Sequence[Variant], directory: str | Path, *, progress: bool | None = None,
                 lyapunov: bool = False, threads: int = 1, command: str = "") -> RunResult:
    """Run (or continue) the whole job of each variant in ``directory``; see the module docstring.

    ``lyapunov``: also estimate the leading Lyapunov exponent of the hybrid model and the truth.
    ``threads``: torch CPU threads while the stages run (0: torch's default; rollouts use
    ``rollout.threads``); one by default (``hybridnde.threads``: why).
    Raises ``ConfigError``/``DataError`` before any file is written when the input is bad.
    """
    from ..output_lock import output_lock

    directory = Path(directory)
    check_variants(variants, directory)
    # one run per folder: a second one re-simulated truth.nc under the first, whose closure was then
    # trained on data no longer there (the stages' own locks refused it only at the train stage)
    with torch_threads(threads, "--threads"), output_lock(directory / "run.json"):
        return _run_all(variants, directory, progress=progress, lyapunov=lyapunov, command=command, threads=threads)


def _run_all(variants: Sequence[Variant], directory: Path, *, progress: bool | None, lyapunov: bool,
             command: str, threads: int) -> RunResult:
    started = wallclock.perf_counter()
    run = _Run(directory, progress=progress, lyapunov=lyapunov, command=command, threads=threads)
    results, failures = [], []
    for index, variant in enumerate(variants):
        position = f"({index + 1}/{len(variants)}) " if len(variants) > 1 else ""
        try:
            results.append(run.variant(variant, position))
        except Exception as error:  # noqa: BLE001 -- a sweep goes on past one variant's failure (Ctrl-C stops it)
            if len(variants) == 1:
                raise
            log.error("variant %s failed: %s: %s; going on with the others", variant.label, type(error).__name__, error)
            failures.append((variant.label, error))
    if not results:  # nothing to compare: the first variant's failure is the run's
        raise failures[0][1]
    failed = [(label, f"{type(error).__name__}: {error}") for label, error in failures]
    outcome = RunResult(directory, results, seconds=wallclock.perf_counter() - started, failed=failed)
    if any(variant.label for variant in variants):  # --compare, even with one value: its table and figure
        from .comparison import write_comparison

        outcome.comparison = write_comparison(outcome, command=command)
    run.record.add_run({"command": command, "variants": [v.label for v in variants], "seconds": outcome.seconds,
                        **({"failed": dict(failed)} if failed else {}),
                        "stages": {f"{r.variant.label or '.'}/{s.stage}": s.action for r in results for s in r.stages}})
    return outcome
