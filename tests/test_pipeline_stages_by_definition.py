"""`hybridnde run`'s orchestration by its definitions (pipeline/runner.py, stages.py, record.py,
held_out.py, variants.py), on tiny inputs and without running the heavy stages where the property
does not need them:

* a stage whose output records the expected identity is reused (not run, its file untouched); one made
  for an earlier variant of the same run is *shared*; anything else runs, resuming only when it has a
  checkpoint and the record says it was interrupted with this identity (or knows nothing of it);
* run.json says a stage started with its identity before it runs and finished with it after;
* the held-out reference is drawn with ``rollout.seed`` (not the training seed), over the rollout's
  horizon, and a stage depending on a compared key's section is the variant's own;
* a changed setting (or input file) remakes exactly the stages that depend on it, the others stay byte
  for byte; the bare-host baseline is rolled out without the closure, from the reference's first states;
* a reference member starting from any training member's state at any saved time is counted, up to
  rounding; only the members evaluate scored are counted;
* the evaluation's identity changes with each thing the metrics depend on (``[evaluate]``,
  ``--lyapunov``, the inputs), and each rollout is scored against the reference;
* ``--quick`` applies the case's ``[quick]`` table to every variant.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hybridnde.config import load_case
from hybridnde.errors import DataError
from hybridnde.pipeline import stages
from hybridnde.pipeline.record import RunRecord
from hybridnde.pipeline.runner import _Run

KS = """
[case]
name = "ks_tiny"
[system]
name = "kuramoto_sivashinsky"
n_points = 32
[time]
dt = 0.25
n_steps = 40
spinup_steps = 80
[initial_condition]
members = 4
seed = 0
[evaluate]
lyapunov_exponent = 0.045
[hybrid]
system = {nonlinear_coefficient = 0.0}
[model]
width = 4
depth = 1
kernel_size = 3
[training]
epochs = 3
batch_size = 32
learning_rate = 3e-3
[rollout]
members = 3
steps = 24
seed = 11
batch_size = 2
[quick]
"training.epochs" = 1
"rollout.steps" = 8
"""


@pytest.fixture
def case_path(tmp_path):
    path = tmp_path / "ks_tiny.toml"
    path.write_text(KS)
    return path


# -- _Run.stage: reuse, share, resume, record ---------------------------------------------------------

class Calls:
    """A stage's ``run(resume)``: records each call's ``resume`` and what run.json said at that moment;
    writes the output; raises ``errors`` in turn."""

    def __init__(self, path: Path, record: Path, errors=()):
        self.path, self.record, self.errors, self.calls, self.seen = path, record, list(errors), [], []

    def __call__(self, resume: bool) -> None:
        self.calls.append(resume)
        self.seen.append(json.loads(self.record.read_text()) if self.record.is_file() else None)
        if self.errors:
            raise self.errors.pop(0)
        self.path.write_text(f"made (resume={resume})")


def fresh_run(directory: Path) -> _Run:
    return _Run(directory, progress=False, lyapunov=False, command="test")


def test_an_output_recording_the_expected_identity_is_reused_untouched(tmp_path):
    out = tmp_path / "truth.nc"
    out.write_text("earlier")
    before = out.stat().st_mtime_ns
    run = fresh_run(tmp_path)
    calls = Calls(out, run.record.path)
    result = run.stage("simulate", out, "abc", "abc", calls, label="", can_resume=True)
    assert (result.action, calls.calls) == ("reused", [])
    assert out.read_text() == "earlier" and out.stat().st_mtime_ns == before


def test_a_stage_made_earlier_in_the_same_run_is_shared_not_made_or_checked_again(tmp_path):
    out = tmp_path / "truth.nc"
    run = fresh_run(tmp_path)
    calls = Calls(out, run.record.path)
    first = run.stage("simulate", out, "abc", None, calls, label="", can_resume=False)
    # the next variant finds it up to date: it was made for an earlier variant of this run
    second = run.stage("simulate", out, "abc", "abc", calls, label="", can_resume=False)
    assert (first.action, second.action) == ("ran", "shared")
    assert calls.calls == [False] and second.seconds == first.seconds


def test_run_json_says_started_with_the_identity_before_the_stage_and_finished_with_it_after(tmp_path):
    out = tmp_path / "closure.pt"
    out.write_text("stale")
    run = fresh_run(tmp_path)
    calls = Calls(out, run.record.path)
    run.stage("train", out, "new", "old", calls, label="", can_resume=False)
    during = calls.seen[0]["stages"]["closure.pt"]
    assert during["started"] == "new" and "checksum" not in during
    after = RunRecord(tmp_path)
    assert after.entry(out)["checksum"] == "new" and after.interrupted_with(out) is None
    assert after.seconds(out, "new") is not None and after.seconds(out, "old") is None


@pytest.mark.parametrize("interrupted, can_resume, resumes", [
    ("new", True, True),      # stopped with this identity: go on from its checkpoint
    (None, True, True),       # a checkpoint the record knows nothing of (a separate command's): tried
    ("other", True, False),   # stopped with another configuration: its checkpoint is not this stage's
    ("new", False, False),    # nothing to resume from
])
def test_a_stage_resumes_only_from_its_own_interrupted_identity(tmp_path, interrupted, can_resume, resumes):
    out = tmp_path / "rollout.nc"
    if interrupted is not None:
        earlier = RunRecord(tmp_path)
        earlier.started(out, "rollout", interrupted)
    run = fresh_run(tmp_path)
    calls = Calls(out, run.record.path)
    assert run.stage("rollout", out, "new", None, calls, label="", can_resume=can_resume).action == "ran"
    assert calls.calls == [resumes]


def test_a_refused_checkpoint_is_dropped_once_and_a_fresh_failure_is_not_retried(tmp_path):
    out = tmp_path / "rollout.nc"
    RunRecord(tmp_path).started(out, "rollout", "new")
    run = fresh_run(tmp_path)
    calls = Calls(out, run.record.path, errors=[DataError("the checkpoint does not fit")])
    assert run.stage("rollout", out, "new", None, calls, label="", can_resume=True).action == "ran"
    assert calls.calls == [True, False]
    other = tmp_path / "baseline.nc"
    calls = Calls(other, run.record.path, errors=[DataError("bad input")])
    with pytest.raises(DataError, match="bad input"):
        run.stage("baseline", other, "new", None, calls, label="", can_resume=False)
    assert calls.calls == [False]
    assert RunRecord(tmp_path).interrupted_with(other) == "new"  # the next run knows it did not finish


def test_summaries_are_removed_before_a_stage_is_made_again_not_when_it_is_reused(tmp_path):
    report, table = tmp_path / "report.md", tmp_path / "compare.md"
    out = tmp_path / "truth.nc"
    out.write_text("earlier")
    run = fresh_run(tmp_path)
    for summary in (report, table):
        summary.write_text("earlier results")
    run.summaries = [report, table]
    run.stage("simulate", out, "abc", "abc", Calls(out, run.record.path), label="", can_resume=False)
    assert report.is_file() and table.is_file()
    run.stage("reference", tmp_path / "reference.nc", "abc", None, Calls(tmp_path / "reference.nc", run.record.path),
              label="", can_resume=False)
    assert not report.exists() and not table.exists()


# -- what each stage is made from ---------------------------------------------------------------------

def test_the_reference_is_drawn_with_the_rollout_seed_over_the_rollout_horizon(case_path):
    case = load_case(case_path)
    reference = stages.reference_case(case)
    assert reference.initial_condition.seed == case.rollout.seed != case.initial_condition.seed
    assert reference.initial_condition.members == case.rollout.members
    samples = reference.time.n_steps // reference.time.save_every
    assert samples == -(-case.rollout.steps // case.hybrid.substeps)
    rolled = stages.rollout_case(case, Path("reference.nc"))
    assert rolled.rollout.initial_conditions == "reference.nc" and rolled.rollout.members == case.rollout.members


def test_a_given_reference_file_with_a_point_distribution_keeps_its_members():
    lorenz = Path(__file__).resolve().parent.parent / "cases" / "lorenz63.toml"
    case = load_case(lorenz, overrides=["rollout.initial_conditions='given.nc'"])
    assert case.initial_condition.distribution == "point"
    assert not stages.repeats_training_start(case)  # the file is the user's: its own states
    assert stages.reference_members(case) == case.rollout.members > 1


def test_the_evaluation_identity_changes_with_everything_the_metrics_depend_on(case_path):
    case = load_case(case_path)
    inputs = {"rollout": "r:c", "reference": "ref", "truth": "t", "baseline": "r:none"}
    identity = stages.evaluation_checksum(case, inputs, lyapunov=False)
    assert stages.evaluation_checksum(case, dict(inputs), lyapunov=False) == identity
    assert stages.evaluation_checksum(case, inputs, lyapunov=True) != identity
    other = load_case(case_path, overrides=["evaluate.vpt_threshold=0.25"])
    assert stages.evaluation_checksum(other, inputs, lyapunov=False) != identity
    for key in inputs:
        assert stages.evaluation_checksum(case, {**inputs, key: "changed"}, lyapunov=False) != identity


# -- held-out check -------------------------------------------------------------------------------------

def write_u(path: Path, u: np.ndarray, members=None) -> Path:
    members = list(range(u.shape[0])) if members is None else members
    xr.Dataset({"u": (("member", "time", "x"), u)},
               coords={"member": members, "time": np.arange(u.shape[1], dtype=float)}).to_netcdf(path)
    return path


def test_reference_members_from_any_training_member_and_time_are_counted_and_only_those_asked_for(tmp_path):
    from hybridnde.pipeline.held_out import members_from_training_states

    rng = np.random.default_rng(3)
    training = rng.standard_normal((20, 4, 8))  # more members than one read holds
    starts = np.stack([training[17, 2],                  # a late member at a later saved time
                       training[3, 0] * (1 + 1e-9),      # a training start, up to rounding
                       rng.standard_normal(8),           # a held-out draw
                       training[0, 1] + 1e-4 * np.abs(training[0, 1]).max()])  # near, but another state
    reference = np.stack([starts, starts + 1.0], axis=1)  # (member, time, x): only time 0 is the start
    truth = write_u(tmp_path / "truth.nc", training)
    ref = write_u(tmp_path / "reference.nc", reference, members=[10, 11, 12, 13])
    assert members_from_training_states(ref, truth) == 2
    assert members_from_training_states(ref, truth, members=[12, 13]) == 0
    assert members_from_training_states(ref, truth, members=[11, 12]) == 1
    assert members_from_training_states(ref, truth, members=[10, 11]) == 2


# -- the stages of whole runs, with the heavy stages replaced by stand-ins --------------------------------

class FakeStages:
    """Stand-ins for simulate, train, the rollouts, evaluate and the reports, each writing a small output
    that records what the real one records (its configuration checksum, the closure, the input it was
    made from) and noting what it was called with: the runner's own decisions (which stage runs, from
    which file, into which folder) are then seen in ~10 ms a run."""

    def __init__(self, monkeypatch):
        import hybridnde.pipeline.comparison as comparison
        import hybridnde.pipeline.report as report
        import hybridnde.rollout_job as rollout_job
        import hybridnde.training as training
        from hybridnde.pipeline import runner

        self.calls: list[dict] = []
        monkeypatch.setattr(stages, "simulate", self.simulate)
        monkeypatch.setattr(stages, "closure_identity", self.closure_identity)
        monkeypatch.setattr(training, "train_case", self.train)
        monkeypatch.setattr(rollout_job, "run_rollout", self.rollout)
        monkeypatch.setattr(runner._Run, "evaluate", lambda run, *args, **kwargs: self.evaluate(run, *args, **kwargs))
        monkeypatch.setattr(report, "write_report", lambda result, command: None)
        monkeypatch.setattr(comparison, "write_comparison", lambda outcome, command: {})

    def made(self, stage: str) -> list[dict]:
        return [call for call in self.calls if call["stage"] == stage]

    @staticmethod
    def write_netcdf(out: Path, values: np.ndarray, **attributes) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        dataset = xr.Dataset({"u": (("member", "time", "x"), values)},
                             coords={"member": np.arange(values.shape[0])})
        dataset.attrs.update(attributes)
        dataset.to_netcdf(out)

    def simulate(self, case, out, *, progress, resume=False, threads=1):
        from hybridnde.simulate import SIMULATION_SECTIONS

        ic = case.initial_condition
        samples = case.time.n_steps // case.time.save_every
        values = np.full((ic.members, samples, 2), float(ic.seed)) + np.arange(ic.members)[:, None, None]
        self.write_netcdf(Path(out), values, config_checksum=case.checksum(SIMULATION_SECTIONS))
        self.calls.append({"stage": "simulate", "out": Path(out), "seed": ic.seed, "members": ic.members,
                           "samples": samples, "resume": resume})

    def train(self, case, truth, closure, *, progress, resume, resume_hint):
        from hybridnde.checksums import data_checksum
        from hybridnde.training import training_checksum

        data = data_checksum(truth)
        Path(closure).parent.mkdir(parents=True, exist_ok=True)
        Path(closure).write_text(json.dumps({
            "checksum": f"closure-{training_checksum(case)[:8]}-{data[:8]}",
            "metadata": {"config_checksum": training_checksum(case), "data": {"data_sha256": data}}}))
        self.calls.append({"stage": "train", "out": Path(closure), "truth": Path(truth), "resume": resume,
                           "seed": case.training.seed})

    @staticmethod
    def closure_identity(path):
        if not Path(path).is_file():
            return None, None
        payload = json.loads(Path(path).read_text())
        return payload["metadata"]["config_checksum"], payload

    def rollout(self, case, out, *, closure_path=None, resume=False, progress=None, resume_hint=True):
        from hybridnde.checksums import data_checksum
        from hybridnde.rollout_resume import rollout_checksum

        start = Path(case.rollout.initial_conditions)
        closure = json.loads(Path(closure_path).read_text())["checksum"] if closure_path else "none"
        with xr.open_dataset(start) as reference:
            first = reference["u"].isel(time=slice(0, 1)).values[:case.rollout.members]
        self.write_netcdf(Path(out), first, config_checksum=rollout_checksum(case), closure_checksum=closure,
                          initial_conditions_sha256=data_checksum(start), run_id=uuid.uuid4().hex)
        self.calls.append({"stage": "rollout", "out": Path(out), "start": start, "closure": closure_path,
                           "members": case.rollout.members, "resume": resume})

    def evaluate(self, run, result, rollout, reference, baseline, closure, figures, identity, *, truth):
        result.directory.mkdir(parents=True, exist_ok=True)
        (result.directory / "metrics.json").write_text(json.dumps({"pipeline": identity, "figures": []}))
        self.calls.append({"stage": "evaluate", "out": result.directory / "metrics.json", "rollout": rollout,
                           "reference": reference, "baseline": baseline, "closure": closure, "truth": truth,
                           "lyapunov": run.lyapunov})


def run_variants(case_path: Path, out: Path, *, overrides=(), compare=(), lyapunov: bool = False):
    from hybridnde.pipeline.runner import _run_all
    from hybridnde.pipeline.variants import build_variants

    variants = build_variants(case_path, overrides=list(overrides), compare=list(compare))
    return _run_all(variants, out, progress=False, lyapunov=lyapunov, command="test", threads=1)


def actions(result) -> dict[str, str]:
    return {f"{variant.variant.label or '.'}/{stage.stage}": stage.action
            for variant in result.variants for stage in variant.stages}


def contents(out: Path) -> dict[str, bytes]:
    return {str(path.relative_to(out)): path.read_bytes() for path in sorted(out.rglob("*"))
            if path.is_file() and path.name != "run.json"}


def test_each_stage_is_made_from_the_file_the_one_before_made(case_path, tmp_path, monkeypatch):
    fake = FakeStages(monkeypatch)
    out = tmp_path / "run"
    case = load_case(case_path)
    result = run_variants(case_path, out)
    assert set(actions(result).values()) == {"ran"}
    truth, reference = fake.made("simulate")
    assert (truth["out"], truth["seed"], truth["members"]) == (out / "truth.nc", 0, 4)
    # the held-out truth: rollout.seed, rollout.members, the rollout's horizon in samples
    assert (reference["out"], reference["seed"], reference["members"]) == (out / "reference.nc", 11, 3)
    assert reference["samples"] == stages.reference_samples(case)
    (train,) = fake.made("train")
    assert (train["out"], train["truth"]) == (out / "closure.pt", out / "truth.nc")
    hybrid, bare = fake.made("rollout")
    assert (hybrid["out"], hybrid["start"], hybrid["closure"]) == (out / "rollout.nc", out / "reference.nc",
                                                                   out / "closure.pt")
    assert (bare["out"], bare["start"], bare["closure"]) == (out / "baseline.nc", out / "reference.nc", None)
    with xr.open_dataset(out / "baseline.nc") as baseline:
        assert baseline.attrs["closure_checksum"] == "none"
    (evaluate,) = fake.made("evaluate")
    assert {key: evaluate[key] for key in ("rollout", "reference", "baseline", "closure", "truth")} == {
        "rollout": out / "rollout.nc", "reference": out / "reference.nc", "baseline": out / "baseline.nc",
        "closure": out / "closure.pt", "truth": out / "truth.nc"}
    record = json.loads((out / "run.json").read_text())
    assert record["runs"][-1]["stages"] == {f"./{stage}": "ran" for stage in stages.STAGES}


@pytest.mark.parametrize("setting, remade", [
    ((), set()),
    (("training.seed=5",), {"train", "rollout", "evaluate"}),
    (("rollout.steps=16",), {"reference", "rollout", "baseline", "evaluate"}),
    (("evaluate.vpt_threshold=0.25",), {"evaluate"}),
    (("time.spinup_steps=60",), set(stages.STAGES)),
])
def test_a_changed_setting_remakes_exactly_the_stages_that_depend_on_it(case_path, tmp_path, monkeypatch,
                                                                      setting, remade):
    fake = FakeStages(monkeypatch)
    out = tmp_path / "run"
    run_variants(case_path, out)
    before = contents(out)
    fake.calls.clear()
    result = run_variants(case_path, out, overrides=setting)
    assert {stage for stage, action in ((key.split("/")[1], action) for key, action in actions(result).items())
            if action == "ran"} == remade
    outputs = {"simulate": "truth.nc", "reference": "reference.nc", "train": "closure.pt",
               "rollout": "rollout.nc", "baseline": "baseline.nc", "evaluate": "metrics.json"}
    after = contents(out)
    for stage, name in outputs.items():  # a stage not made again is untouched, byte for byte
        if stage not in remade:
            assert after[name] == before[name], stage
    record = json.loads((out / "run.json").read_text())
    assert record["runs"][-1]["stages"] == {f"./{stage}": "ran" if stage in remade else "reused"
                                            for stage in stages.STAGES}
    assert len(record["runs"]) == 2


@pytest.mark.parametrize("removed", ["rollout", "baseline"])
def test_a_rollout_made_again_is_evaluated_again(case_path, tmp_path, monkeypatch, removed):
    """metrics.json was reused by the rollouts' identities (configuration and closure), so a rollout made
    again (deleted, damaged; on another device, other bits) kept the old file's metrics."""
    FakeStages(monkeypatch)
    out = tmp_path / "run"
    run_variants(case_path, out)
    (out / f"{removed}.nc").unlink()
    assert {stage: action for stage, action in actions(run_variants(case_path, out)).items() if action == "ran"} == {
        f"./{removed}": "ran", "./evaluate": "ran"}
    assert set(actions(run_variants(case_path, out)).values()) == {"reused"}


def test_lyapunov_remakes_the_evaluation_alone(case_path, tmp_path, monkeypatch):
    fake = FakeStages(monkeypatch)
    out = tmp_path / "run"
    run_variants(case_path, out)
    fake.calls.clear()
    result = run_variants(case_path, out, lyapunov=True)
    assert [(call["stage"], call["lyapunov"]) for call in fake.calls] == [("evaluate", True)]
    assert actions(result)["./evaluate"] == "ran"


def test_a_reference_changed_under_the_rollouts_remakes_them_and_their_evaluation(case_path, tmp_path, monkeypatch):
    fake = FakeStages(monkeypatch)
    out = tmp_path / "run"
    given = tmp_path / "given.nc"
    FakeStages.write_netcdf(given, np.ones((3, 5, 2)))
    run_variants(case_path, out, overrides=[f"rollout.initial_conditions='{given}'"])
    FakeStages.write_netcdf(given, np.full((3, 5, 2), 2.0))  # other states, same configuration
    fake.calls.clear()
    result = run_variants(case_path, out, overrides=[f"rollout.initial_conditions='{given}'"])
    assert {key: action for key, action in actions(result).items() if action == "ran"} == {
        "./rollout": "ran", "./baseline": "ran", "./evaluate": "ran"}
    assert all(call["start"] == given for call in fake.made("rollout"))


def test_compared_variants_share_exactly_the_stages_their_key_does_not_reach(case_path, tmp_path, monkeypatch):
    fake = FakeStages(monkeypatch)
    out = tmp_path / "sweep"
    result = run_variants(case_path, out, compare=["rollout.seed=3,4"])
    assert actions(result) == {
        "seed=3/simulate": "ran", "seed=3/reference": "ran", "seed=3/train": "ran", "seed=3/rollout": "ran",
        "seed=3/baseline": "ran", "seed=3/evaluate": "ran",
        "seed=4/simulate": "shared", "seed=4/reference": "ran", "seed=4/train": "shared",
        "seed=4/rollout": "ran", "seed=4/baseline": "ran", "seed=4/evaluate": "ran"}
    truth, *references = fake.made("simulate")
    assert truth["out"] == out / "truth.nc"
    # each variant's held-out truth is drawn with its own seed, into its own folder, and its rollouts
    # (hybrid and bare host) start from it
    assert [(call["out"], call["seed"]) for call in references] == [
        (out / "seed=3" / "reference.nc", 3), (out / "seed=4" / "reference.nc", 4)]
    assert [(call["out"], call["start"], call["closure"]) for call in fake.made("rollout")] == [
        (out / "seed=3" / "rollout.nc", out / "seed=3" / "reference.nc", out / "closure.pt"),
        (out / "seed=3" / "baseline.nc", out / "seed=3" / "reference.nc", None),
        (out / "seed=4" / "rollout.nc", out / "seed=4" / "reference.nc", out / "closure.pt"),
        (out / "seed=4" / "baseline.nc", out / "seed=4" / "reference.nc", None)]
    record = json.loads((out / "run.json").read_text())
    assert record["runs"][-1]["stages"] == actions(result)

    fake.calls.clear()
    result = run_variants(case_path, out, compare=["training.seed=1,2"])
    assert [call["out"] for call in fake.made("train")] == [out / "seed=1" / "closure.pt",
                                                            out / "seed=2" / "closure.pt"]
    assert [(call["out"], call["closure"]) for call in fake.made("rollout")] == [
        (out / "seed=1" / "rollout.nc", out / "seed=1" / "closure.pt"),
        (out / "baseline.nc", None),
        (out / "seed=2" / "rollout.nc", out / "seed=2" / "closure.pt")]
    assert actions(result)["seed=2/baseline"] == "shared"
    assert [call["out"] for call in fake.made("evaluate")] == [out / "seed=1" / "metrics.json",
                                                               out / "seed=2" / "metrics.json"]


def test_a_truth_changed_under_its_closure_retrains_it_and_remakes_what_was_made_from_it(case_path, tmp_path,
                                                                                           monkeypatch):
    """Same configuration, other training data: the closure is trained again, and the rollout made with
    the old closure is not this closure's; the bare host and the reference do not depend on it."""
    fake = FakeStages(monkeypatch)
    out = tmp_path / "run"
    run_variants(case_path, out)
    with xr.open_dataset(out / "truth.nc") as truth:
        changed = truth.load()
    changed["u"] = changed["u"] + 0.5
    changed.to_netcdf(out / "truth.nc")  # config_checksum kept: only the numbers differ
    before = contents(out)
    fake.calls.clear()
    result = run_variants(case_path, out)
    assert {key for key, action in actions(result).items() if action == "ran"} == {"./train", "./rollout",
                                                                                "./evaluate"}
    closure = json.loads((out / "closure.pt").read_text())["checksum"]
    with xr.open_dataset(out / "rollout.nc") as rollout:
        assert rollout.attrs["closure_checksum"] == closure
    after = contents(out)
    assert all(after[name] == before[name] for name in ("truth.nc", "reference.nc", "baseline.nc"))


@pytest.mark.parametrize("compare", [(), ("training.seed=1,2",)])
def test_quick_applies_the_cases_quick_table_to_every_variant(case_path, compare):
    from hybridnde.pipeline.variants import build_variants

    full = build_variants(case_path, compare=list(compare))
    quick = build_variants(case_path, quick=True, compare=list(compare))
    assert [variant.label for variant in quick] == [variant.label for variant in full]
    for short, long in zip(quick, full):
        assert (short.case.training.epochs, short.case.rollout.steps) == (1, 8)  # the [quick] table's values
        assert (long.case.training.epochs, long.case.rollout.steps) == (3, 24)


def test_the_evaluation_scores_each_rollout_against_the_reference_and_counts_only_scored_members(
        case_path, tmp_path, monkeypatch):
    """evaluate: the hybrid rollout and the bare host each against the held-out reference (not the
    training data), the closure handed on only for --lyapunov, the training-state count over the members
    evaluate scored, and the identity recorded."""
    import hybridnde.evaluate as evaluate_module
    from hybridnde.pipeline import runner
    from hybridnde.pipeline.variants import Variant

    scored_calls = []

    def evaluate_files(path, reference, *, case, figures_dir=None, lyapunov=False, closure_path=None):
        scored_calls.append((Path(path).name, Path(reference).name, closure_path))
        figures = []
        if figures_dir is not None:
            (Path(figures_dir) / "error_growth.png").write_bytes(b"png")
            figures = [str(Path(figures_dir) / "error_growth.png")]
        return {"valid_prediction_time": {"members": [1, 2]}, "scored": Path(path).name, "figures": figures}

    monkeypatch.setattr(evaluate_module, "evaluate_files", evaluate_files)
    monkeypatch.setattr(runner, "training_curves_figure", lambda *args, **kwargs: None)
    monkeypatch.setattr(runner, "error_growth_comparison_figure", lambda *args, **kwargs: None)
    rng = np.random.default_rng(5)
    training = rng.standard_normal((4, 3, 8))
    truth = write_u(tmp_path / "truth.nc", training)
    starts = np.stack([training[2, 0], rng.standard_normal(8), rng.standard_normal(8)])
    reference = write_u(tmp_path / "reference.nc", np.stack([starts, starts], axis=1))  # member 0: not scored
    for lyapunov in (False, True):
        scored_calls.clear()
        folder = tmp_path / f"lyapunov={lyapunov}"
        folder.mkdir()
        result = runner.VariantResult(Variant(load_case(case_path)), folder)
        run = _Run(folder, progress=False, lyapunov=lyapunov, command="test")
        identity = {"checksum": "abc", "inputs": {}}
        run.evaluate(result, folder / "rollout.nc", reference, folder / "baseline.nc", folder / "closure.pt",
                     folder / "figures", identity, truth=truth)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert scored_calls == [("rollout.nc", "reference.nc", folder / "closure.pt" if lyapunov else None),
                                ("baseline.nc", "reference.nc", None)]
        assert (metrics["scored"], metrics["baseline"]["scored"]) == ("rollout.nc", "baseline.nc")
        assert metrics["members_from_training_states"] == 0
        assert metrics["pipeline"] == identity
        assert metrics["figures"] and all(Path(path).is_file() for path in metrics["figures"])
    from hybridnde.pipeline.held_out import members_from_training_states
    assert members_from_training_states(reference, truth) == 1  # the unscored member would have counted


def test_an_evaluation_whose_figures_are_gone_is_made_again(case_path, tmp_path, monkeypatch):
    fake = FakeStages(monkeypatch)
    out = tmp_path / "run"
    run_variants(case_path, out)
    figures = [out / "figures" / "a.png", out / "figures" / "b.png"]
    for figure in figures:
        figure.parent.mkdir(exist_ok=True)
        figure.write_bytes(b"png")
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "figures": [str(path) for path in figures]}))
    fake.calls.clear()
    assert actions(run_variants(case_path, out))["./evaluate"] == "reused"
    figures[1].unlink()
    assert actions(run_variants(case_path, out))["./evaluate"] == "ran"
    assert [call["stage"] for call in fake.calls] == ["evaluate"]


def test_a_sweep_whose_variants_all_fail_fails_with_the_first_ones_error(case_path, tmp_path, monkeypatch):
    import hybridnde.training as training

    fake = FakeStages(monkeypatch)
    seeds = []

    def diverging(case, truth, closure, **kwargs):
        seeds.append(case.training.seed)
        raise FloatingPointError(f"seed {case.training.seed}: the loss is not finite")

    monkeypatch.setattr(training, "train_case", diverging)
    out = tmp_path / "sweep"
    with pytest.raises(FloatingPointError, match="seed 1"):
        run_variants(case_path, out, compare=["training.seed=1,2"])
    assert seeds == [1, 2]  # the second variant was still tried
    assert [call["stage"] for call in fake.calls] == ["simulate", "simulate"]  # truth, reference: once
