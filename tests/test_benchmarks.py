"""The benchmark scripts run (``--tiny``, in a subprocess) and report what they promise.

No timing is asserted here (speed figures live in docs/performance.md); what is checked is that each
script runs end to end, prints its table and JSON lines, and that its side-by-side contenders solve
the same equation. The exponax/jax contenders are the optional ``bench`` extra: those checks skip
when it is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solvers import c_kernels

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HAVE_EXPONAX = all(importlib.util.find_spec(name) is not None for name in ("jax", "exponax"))


def run_tiny(script: str, *arguments: str) -> tuple[str, list[dict]]:
    """Run ``benchmarks/<script> --tiny``; return its stdout and the JSON records it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny", *arguments], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert records, result.stdout[-2000:]
    return result.stdout, records


@pytest.fixture(scope="module")
def ks_stepper() -> tuple[str, list[dict]]:
    return run_tiny("ks_stepper.py")


def throughput(records: list[dict]) -> dict[str, dict]:
    return {r["contender"]: r for r in records if r["benchmark"] == "ks_stepper"}


def test_ks_stepper_runs_and_times_every_contender(ks_stepper):
    stdout, records = ks_stepper
    rows = throughput(records)
    assert {"hybridnde", "hybridnde step()", "numpy KT", "FFT floor", "FFT floor (allocating)"} <= set(rows)
    for row in rows.values():
        assert row["member_steps_per_s_cpu"] > 0 and math.isfinite(row["member_steps_per_s_cpu"])
        assert row["threads"] == 1 and row["dtype"] == "float64"
    assert "KS ETDRK4 throughput" in stdout


def test_ks_stepper_numpy_reference_is_the_same_scheme(ks_stepper):
    """The plain numpy Kassam-Trefethen ETDRK4 agrees with ours to rounding: a fair comparison."""
    rows = throughput(ks_stepper[1])
    assert rows["numpy KT"]["relative_deviation_after_20_steps"] < 1e-10
    assert rows["hybridnde step()"]["relative_deviation_after_20_steps"] < 1e-10


@pytest.mark.skipif(not HAVE_EXPONAX, reason="exponax/jax (the optional 'bench' extra) not installed")
def test_ks_stepper_exponax_solves_our_equation(ks_stepper):
    """exponax's conservative KS stepper, given our dealiasing cut, computes our steps to rounding (the
    combustion form would differ at O(1); its own 2/3 keeps one mode fewer, and the old broadband
    start let the two differ by 1e-4 to 2e-3, so a check at 1e-2 could not see a smaller error)."""
    rows = throughput(ks_stepper[1])
    for name in ("exponax", "exponax (Fourier state)"):
        assert rows[name]["member_steps_per_s_cpu"] > 0
        assert rows[name]["relative_deviation_after_20_steps"] < 1e-12 and rows[name]["agrees"]


def test_ks_stepper_states_target_one_against_the_fastest_floor(ks_stepper):
    """The floor a share is quoted against is the fastest of torch (into buffers, allocating) and DUCC
    (the FFT our step and XLA use on CPUs), per size: which one is fastest depends on the machine and
    the size (DUCC at batch 1, torch's allocating calls at batch 256 on an Intel Xeon)."""
    stdout, records = ks_stepper
    rows = throughput(records)
    (summary,) = [r for r in records if r["benchmark"] == "ks_stepper_targets"]
    floors = {name: rows[name]["member_steps_per_s_cpu"] for name in rows if name.startswith("FFT floor")}
    if importlib.util.find_spec("ducc0") is not None:
        assert "FFT floor (DUCC)" in floors
    assert summary["fastest_floor_cpu"] == max(floors, key=floors.get)
    assert summary["share_of_fastest_floor_cpu"] == pytest.approx(
        rows["hybridnde"]["member_steps_per_s_cpu"] / max(floors.values()))
    assert summary["all_agree"] and "Target 1 (issue 9)" in stdout


def test_ks_stepper_measures_rollout_memory(ks_stepper):
    memory = [r for r in ks_stepper[1] if r["benchmark"] == "ks_rollout_memory"]
    assert {(r["mode"], r["n_steps"]) for r in memory} == {(m, n) for m in ("trajectory", "rollout") for n in (10, 40)}
    assert all(r["peak_rss_growth_bytes"] >= 0 for r in memory)


def test_closure_overhead_runs():
    stdout, records = run_tiny("closure_overhead.py")
    (record,) = records
    for key in ("bare_step_s", "step_with_free_closure_s", "four_closure_forwards_s", "step_with_closure_s"):
        assert record[key] > 0
    assert math.isfinite(record["hook_overhead"]) and record["solver_share"] > 0
    assert math.isfinite(record["solver_share_direct_paired"]) and "(direct, paired)" in stdout
    assert "Closure in the hook" in stdout
    # faults counted per step (glibc's lottery shows there), and the allocator setting recorded
    assert record["step_with_closure_faults_per_step"] >= 0 and "faults/step" in stdout
    assert isinstance(record["allocator"], str) and record["allocator"]


def test_periodic_cnn_halo_times_both_forms_and_they_agree():
    stdout, records = run_tiny("periodic_cnn_halo.py")
    (record,) = records
    assert record["max_abs_difference"] < 1e-12  # the same closure both ways
    for key in ("forward_wrap_s", "forward_padded_s", "training_wrap_s", "training_padded_s"):
        assert record[key] > 0
    assert record["forward_ratio"] > 0 and record["training_ratio"] > 0 and "fwd+bwd ratio" in stdout


def test_periodic_cnn_blocks_times_both_forms_and_they_agree():
    stdout, records = run_tiny("periodic_cnn_blocks.py")
    (record,) = records
    assert record["max_abs_difference"] < 1e-12 and record["members_per_block"] == 3  # 12 members in blocks
    for key in ("forward", "training", "tangents"):
        assert record[f"{key}_blocks_s"] > 0 and record[f"{key}_whole_s"] > 0 and record[f"{key}_ratio"] > 0
    assert "jvp+bwd ratio" in stdout


def test_closure_overhead_trace_counts_each_contenders_operations():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "closure_overhead.py"), "--tiny", "--trace"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.strip().partition(": ")
        if rest.endswith("(calls' gaps included)"):
            counts[name] = float(rest.split(" kernels")[0])
    assert set(counts) == {"bare step", "step with free closure", "4 closure forwards", "step with closure"}
    # the step with the closure runs the solver's operations and the closure's: more than either alone
    assert counts["step with closure"] > max(counts["4 closure forwards"], counts["bare step"])
    assert "(together)" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton (its CPU interpreter) not installed")
def test_ks_dense_fused_times_both_steps_and_they_agree():
    stdout, records = run_tiny("ks_dense_fused.py")  # on the CPU: Triton's interpreter
    expected = {(contender, closure) for contender in ("torch", "fused") for closure in (False, True)}
    assert {(r["contender"], r["closure"]) for r in records} == expected
    for record in records:
        assert record["step_s"] > 0
        assert record["relative_deviation_after_20_steps"] < 1e-13  # the same step, summed in another order
    assert "fused Triton stages vs torch" in stdout


def test_ks_dense_crossover_times_both_paths_and_reports_the_auto_choice():
    stdout, records = run_tiny("ks_dense_crossover.py")
    assert len(records) == 4  # N = 16, batch 1 and 2, without and with a closure
    for record in records:
        assert record["fft_step_s"] > 0 and record["dense_step_s"] > 0
        # tiny float64 work on the CPU: within the dense limits, but without a closure the compiled
        # whole Fourier step comes first where the kernels are built
        assert record["auto_picks_dense"] == (record["closure"] or c_kernels.library() is None)
    assert {record["closure"] for record in records} == {False, True}
    assert "Dense vs FFT" in stdout
    stdout, records = run_tiny("ks_dense_crossover.py", "--points", "32", "--batches", "2", "4", "--public-step")
    # a loop of step(): the smallest work (32**2 * 2 <= whole_step_dense_work) stays dense without a closure
    assert [(r["batch"], r["closure"], r["auto_picks_dense"], r["stepping"]) for r in records] == [
        (2, False, True, "step()"), (2, True, True, "step()"),
        (4, False, c_kernels.library() is None, "step()"), (4, True, True, "step()")]
    assert "(public step())" in stdout


@pytest.fixture(scope="module")
def training_step() -> tuple[str, list[dict]]:
    return run_tiny("training_step.py")


def test_training_step_times_every_variant(training_step):
    stdout, records = training_step
    steps = [r for r in records if r["benchmark"] == "training_step"]
    variants = {"plain", "+ jvp tangent", "+ jvp vmap", "+ jvp stacked", "+ fd", "+ dense jacfwd", "+ dense jacrev"}
    for n_points in (16, 32):
        rows = {r["variant"]: r for r in steps if r["n_points"] == n_points}
        assert set(rows) == variants
        assert all(r["step_s_cpu"] > 0 and math.isfinite(r["ratio_to_plain"]) for r in rows.values())
        assert rows["+ dense jacfwd"]["probes"] == n_points and rows["+ jvp tangent"]["probes"] == 2
    assert "training step: forward + backward + AdamW" in stdout


def test_training_step_regularizers_compared_are_exact_and_equal(training_step):
    """The three exact J_C v methods give the same penalty and gradient, and the dense penalty equals
    L_AD with the basis vectors as probes: the benchmark compares equal work."""
    for record in (r for r in training_step[1] if r["benchmark"] == "training_step"):
        assert record["jvp_methods_max_relative_gradient_difference"] < 1e-10
        assert record["jvp_methods_max_relative_value_difference"] < 1e-10
        for method in ("jacfwd", "jacrev"):
            assert record[f"dense_{method}_vs_basis_probes_relative_difference"] < 1e-10


def test_training_step_memory_grows_with_rollout_length_except_adjoint(training_step):
    """Autograd keeps every solver step's tensors (twice the steps: about twice the bytes); the
    adjoint keeps no graph of the forward solve."""
    memory = {(r["setup"], r["rollout_steps"]): r for r in training_step[1] if r["benchmark"] == "training_step_memory"}
    assert set(memory) == {(s, k) for s in ("ks_step", "ode_adjoint") for k in (1, 2)}
    step_growth = memory["ks_step", 2]["saved_for_backward_bytes"] / memory["ks_step", 1]["saved_for_backward_bytes"]
    assert 1.7 < step_growth < 2.3
    adjoint = memory["ode_adjoint", 2]["saved_for_backward_bytes"] / memory["ode_adjoint", 1]["saved_for_backward_bytes"]
    assert adjoint < 1.3
    assert memory["ode_adjoint", 2]["nfe_backward"] > 0


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None or importlib.util.find_spec("mpi4py") is None,
                    reason="needs mpiexec and mpi4py (pip install 'hybridnde[mpi]')")
def test_rollout_scaling_runs_one_and_two_ranks():
    stdout, records = run_tiny("rollout_scaling.py")
    rows = {r["ranks"]: r for r in records if r["benchmark"] == "rollout_scaling"}
    assert set(rows) == {1, 2}
    for row in rows.values():
        assert row["member_steps_per_second"] > 0 and row["end_to_end_member_steps_per_second"] > 0
        assert math.isfinite(row["weak_scaling_efficiency"])
    assert rows[1]["weak_scaling_efficiency"] == pytest.approx(1.0)
    assert "weak scaling" in stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="core pinning is Linux-only")
def test_cores_option_confines_every_thread_and_refuses_cores_not_available():
    """``--cores 0`` puts the process's threads, those started before and after, on core 0 alone (the
    one-core wall-clock comparison); a core the process may not use is refused by name."""
    allowed = sorted(os.sched_getaffinity(0))
    probe = ("import sys, threading, os; sys.path.insert(0, {where!r}); import common\n"
             "done = threading.Event(); early = threading.Thread(target=done.wait, daemon=True); early.start()\n"
             "common.configure_threads(1, {cores!r})\n"
             "late = []; t = threading.Thread(target=lambda: late.append(os.sched_getaffinity(0))); t.start(); t.join()\n"
             "print(sorted(os.sched_getaffinity(early.native_id)), sorted(late[0]), "
             "common.machine_description(1)['pinned_cores']); done.set()")
    result = subprocess.run([sys.executable, "-c", probe.format(where=str(BENCHMARKS), cores=str(allowed[0]))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [f"[{allowed[0]}]", f"[{allowed[0]}]", str(allowed[0])]
    refused = subprocess.run([sys.executable, "-c", probe.format(where=str(BENCHMARKS), cores=str(max(allowed) + 1))],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "may only use cores" in refused.stderr


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="core pinning is Linux-only")
def test_ks_stepper_times_the_peers_on_their_own_cores_when_asked():
    """``--peer-cores``: the peers (numpy, exponax) run confined to the given core, ours on every core, in
    the same interleaved rounds; the records say which ran where."""
    core = str(min(os.sched_getaffinity(0)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "ks_stepper.py"), "--tiny", "--no-memory",
                             "--peer-cores", core], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = throughput([json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")])
    assert rows["numpy KT"]["peer_cores"] == core and rows["hybridnde"]["peer_cores"] is None
    assert all(row["peer_cores"] == core for name, row in rows.items() if name.startswith("exponax"))
    assert "the peers confined to core(s)" in result.stdout


def test_training_step_profile_counts_launches_and_synchronisations():
    """``--profile`` (the GPU suite's diagnosis of the launch-bound step) runs and reports per step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "training_step.py"), "--tiny", "--profile"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("plain", "+ jvp tangent"):
        assert f"N = 16, {name}, per step: " in result.stdout and "synchronisations" in result.stdout
    assert "aten::" in result.stdout  # the operator table


def test_simulate_streaming_times_both_simulations_and_finds_them_equal():
    stdout, records = run_tiny("simulate_streaming.py")
    timed = [r for r in records if r["benchmark"] == "simulate_streaming"]
    assert {r["case"] for r in timed} == {"ks_l22", "lorenz63"}
    for record in timed:
        assert record["identical"] and math.isfinite(record["ratio_cpu"]) and record["ratio_cpu"] > 0
        assert set(record["seconds_cpu"]) == {"in memory", "streamed"}
    (memory,) = [r for r in records if r["benchmark"] == "simulate_streaming_memory"]
    assert set(memory["peak_rss_growth_bytes"]) == {"in memory", "streamed"} and memory["trajectory_bytes"] > 0
    assert "streamed against in memory" in stdout


def test_chunk_journal_times_rollouts_with_and_without_it_and_finds_them_equal():
    stdout, records = run_tiny("chunk_journal.py")
    assert {r["case"] for r in records} == {"lorenz63", "ks_fd"}
    for record in records:
        assert record["identical"] and record["chunks"] > 0 and math.isfinite(record["ratio_cpu"])
        assert set(record["seconds_cpu"]) == {"journal", "no journal"}
    assert "with and without the chunk journal" in stdout
