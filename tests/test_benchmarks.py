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
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HAVE_EXPONAX = all(importlib.util.find_spec(name) is not None for name in ("jax", "exponax"))


def run_tiny(script: str) -> tuple[str, list[dict]]:
    """Run ``benchmarks/<script> --tiny``; return its stdout and the JSON records it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny"], capture_output=True, text=True,
                            timeout=600, env=env)
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
    """exponax's conservative KS stepper matches ours up to its different dealiasing (the combustion
    form would differ at O(1))."""
    rows = throughput(ks_stepper[1])
    for name in ("exponax", "exponax (Fourier state)"):
        assert rows[name]["member_steps_per_s_cpu"] > 0
        assert rows[name]["relative_deviation_after_20_steps"] < 1e-2


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
    assert "Closure in the hook" in stdout
