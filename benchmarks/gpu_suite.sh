#!/usr/bin/env bash
# The issue-9 benchmarks and the CUDA tests on a GPU machine, in one go (each part time-boxed, so one
# hang cannot take the others with it). Output goes to stdout and, when OUT is set, to $OUT/*.log/jsonl.
#
#     bash benchmarks/gpu_suite.sh                  # every part; needs torch with CUDA, jax[cuda] + exponax
#     bash benchmarks/gpu_suite.sh ks_stepper tests # only these parts (names below)
#
# Quote wall-clock ratios from it (benchmarks/common.py: on a GPU the host's CPU time is not the GPU's).
set -u
OUT=${OUT:-/tmp/hybridnde-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and torch share the GPU
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# PYTEST_WORKERS=N spreads the test parts over N pytest-xdist processes sharing the GPU (the eager
# device-parametrised tests are bound by Python's launches, not by the GPU)
WORKERS=${PYTEST_WORKERS:+-n $PYTEST_WORKERS}
PARTS=" ${*:-environment tests device_tests ks_stepper crossover dense_fused closure_overhead closure_overhead_long closure_trace closure_trace_long cnn_halo closure_overhead_eager training_step profile memory pipeline rollout} "
part() {  # part NAME SECONDS COMMAND...
  local name=$1 seconds=$2; shift 2
  [[ $PARTS == *" $name "* ]] || return 0
  echo "=== $name ($(date +%T), limit ${seconds}s): $*"
  local start=$SECONDS
  timeout "$seconds" "$@" > >(tee "$OUT/$name.log") 2>&1
  echo "=== $name: exit $? after $((SECONDS - start)) s"
}
part environment 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "
import torch, numpy, sys; print(sys.version.split()[0], \"torch\", torch.__version__, torch.cuda.get_device_name(0))
try:
    import jax, exponax; print(\"jax\", jax.__version__, jax.devices(), \"exponax\", exponax.__version__)
except Exception as error: print(\"no exponax peer:\", error)"'
# the GPU-only code (CUDA graphs, Triton kernels), then every device-parametrised test on cuda: the latter
# step small states eagerly, one launch per operation, and did not finish in 100 s (27 passed, 2026-11-27)
GPU_ONLY_TESTS="tests/test_cuda_graphs.py tests/test_fused_dense.py tests/test_fused_stages.py"
part tests 240 python3 -m pytest -q -p no:cacheprovider -rfE --durations=10 $WORKERS -k cuda $GPU_ONLY_TESTS
part device_tests 420 python3 -m pytest -q -p no:cacheprovider -rfE --durations=15 $WORKERS -k cuda tests \
  $(for f in $GPU_ONLY_TESTS; do echo --ignore="$f"; done)
part ks_stepper 260 python3 benchmarks/ks_stepper.py --device cuda --no-numpy --no-memory --repeats 5 \
  --min-seconds 0.1 --jsonl "$OUT/bench.jsonl"
part closure_overhead 60 python3 benchmarks/closure_overhead.py --device cuda --repeats 5 --min-seconds 0.1 \
  --jsonl "$OUT/bench.jsonl"
# the same with 200 steps a call: each call's trajectory set-up (~160 us on an H200's host, the GPU idle
# after the previous call's synchronise) spread over 10x the steps
part closure_overhead_long 90 python3 benchmarks/closure_overhead.py --device cuda --steps 200 --repeats 5 \
  --min-seconds 0.1 --jsonl "$OUT/bench.jsonl"
# the periodic CNN's one wrap against circular padding at every layer (same weights), on the GPU
part cnn_halo 60 python3 benchmarks/periodic_cnn_halo.py --device cuda --repeats 5 --min-seconds 0.1 \
  --jsonl "$OUT/bench.jsonl"
# where the step-with-closure's extra microseconds go: each contender's kernels under torch.profiler
part closure_trace 90 python3 benchmarks/closure_overhead.py --device cuda --trace
# the same at 200 steps a call: are the closure's kernels slower on developed fields, alone and inside the step?
part closure_trace_long 120 python3 benchmarks/closure_overhead.py --device cuda --trace --steps 200
part closure_overhead_eager 60 python3 benchmarks/closure_overhead.py --device cuda --eager --repeats 5 \
  --min-seconds 0.1 --jsonl "$OUT/bench.jsonl"
part training_step 110 python3 benchmarks/training_step.py --device cuda --no-memory --repeats 5 \
  --jsonl "$OUT/bench.jsonl"
# why a plain training step takes ~24 ms on an H100: launches, synchronisations, top kernels (printed only)
part profile 90 python3 benchmarks/training_step.py --device cuda --profile --sizes 64
# item 5 on the GPU: peak allocation of a rollout vs its length, of a training step vs its rollout length
part memory 360 bash -c "python3 benchmarks/ks_stepper.py --device cuda --memory-only --jsonl $OUT/bench.jsonl &&
  python3 benchmarks/training_step.py --device cuda --memory-only --memory-steps 1 4 16 --jsonl $OUT/bench.jsonl"
# the whole job on the GPU (compute.device = "auto" picks it): simulate, train, roll out, evaluate
part pipeline 110 python3 -m hybridnde.cli run cases/ks_l22.toml --quick --no-progress --out /tmp/hybridnde-gpu-run
# an ensemble at scale with the trained closure inside CUDA graphs (run after pipeline: its closure file)
part rollout 120 python3 -m hybridnde.cli rollout cases/ks_l22.toml --quick --no-progress \
  --closure /tmp/hybridnde-gpu-run/closure.pt --out /tmp/hybridnde-gpu-run/ensemble.nc \
  --set rollout.members=2048 --set rollout.steps=2000 --set rollout.save_every=20
# the dense step's Triton stages against its torch step, per tile size and split (tile_sizes, splits)
part dense_fused 200 python3 benchmarks/ks_dense_fused.py --device cuda --sweep --repeats 3 --min-seconds 0.05 \
  --points 64 256 512 --batches 1 64 1024 --jsonl "$OUT/bench.jsonl"
# where the dense step beats the FFT step on this GPU (the "auto" limits of the spectral KS solver)
part crossover 150 python3 benchmarks/ks_dense_crossover.py --device cuda --repeats 3 --min-seconds 0.05 \
  --jsonl "$OUT/bench.jsonl"
