#!/usr/bin/env bash
# Device checks for a machine with a CUDA GPU (docs/determinism.md): set-up, the tests marked `cuda`, a short
# timing of Inverting Gradients on the CPU and on the GPU, benchmarks/speed.py's table on the GPU (up to 10 min;
# GPU_CHECK_SPEED=0 leaves it out) and a summary; under five minutes once set up without the table.
#
#   bash scripts/gpu_check.sh
#
# Interpreter: .venv/bin/python when it imports fedinvert, else `make setup` first (needs the network; its time
# comes on top); FEDINVERT_PYTHON=/path/to/python uses that interpreter instead.
# Logs: GPU_CHECK_LOGS=folder (default: a fresh temporary folder), printed in the summary.
# Exit status: 0 all checks passed; 1 a device test or the timing failed; 2 set-up failed;
#              3 no CUDA device is visible to torch (nothing was checked).
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
logs=${GPU_CHECK_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/fedinvert-gpu-check.XXXXXX")}
mkdir -p "$logs"

# -- set-up ------------------------------------------------------------------------------------------------------
py=${FEDINVERT_PYTHON:-.venv/bin/python}
if ! "$py" -c "import fedinvert, torch, pytest" >"$logs/import.log" 2>&1; then
    if [ -n "${FEDINVERT_PYTHON:-}" ]; then
        echo "error: $py cannot import fedinvert, torch and pytest (see $logs/import.log)"
        exit 2
    fi
    echo "set-up: .venv is missing or incomplete; running make setup (log: $logs/setup.log)"
    if ! timeout 1200 make setup >"$logs/setup.log" 2>&1; then
        echo "error: make setup failed; last lines of $logs/setup.log:"
        tail -n 15 "$logs/setup.log"
        exit 2
    fi
    py=.venv/bin/python
fi

# -- is there a GPU? ---------------------------------------------------------------------------------------------
if ! device=$("$py" -c "
import torch
if not torch.cuda.is_available():
    raise SystemExit(f'torch {torch.__version__} (CUDA build: {torch.version.cuda or \"none\"}) sees no CUDA device')
print(f'{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}')
" 2>&1); then
    echo "no CUDA device: ${device##*$'\n'}"
    echo "nothing was checked (exit 3); run this on a machine with a CUDA GPU"
    exit 3
fi
echo "device: $device"
threads=$(nproc 2>/dev/null || echo 2)
test_threads=$((threads < 4 ? threads : 4))  # the tests' CPU halves use small networks: few threads are fastest

# -- the device tests --------------------------------------------------------------------------------------------
echo "device tests: pytest -m cuda (log: $logs/tests.log)"
FEDINVERT_TEST_THREADS=$test_threads timeout 240 "$py" -m pytest -q -s -p no:cacheprovider -m cuda -rs tests \
    >"$logs/tests.log" 2>&1
tests_rc=$?
tests_line=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$logs/tests.log" | tail -n 1)
[ "$tests_rc" = 124 ] && tests_line="timed out after 240 s ($tests_line)"
kernels=$(grep -m 1 "nondeterministic kernels reported" "$logs/tests.log" | sed 's/.*IG run: //')

# -- the timing --------------------------------------------------------------------------------------------------
echo "timing: Inverting Gradients, convnet, B = 8, 32×32 (log: $logs/timing.log)"
timeout 120 "$py" - "$threads" >"$logs/timing.log" 2>&1 <<'PYTHON'
"""ms per Inverting Gradients iteration (eager) on the CPU and the GPU, set-up excluded: the difference of two
runs of different length, divided by the difference of their iterations."""
import json
import sys
import time

import torch

from fedinvert.attacks import ATTACKS
from fedinvert.determinism import policy
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation

torch.set_num_threads(int(sys.argv[1]))
B, SIZE = 8, 32
images = torch.rand(B, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
labels = torch.arange(B) % 10
model = build_model("convnet", in_channels=3, num_classes=10, image_size=SIZE, seed=0)
update = FedSGDClient(mode="eval").update(model, (images - 0.5) / 0.5, labels)
obs = Observation(model=model, update=update, kind="gradient", image_shape=(3, SIZE, SIZE), num_classes=10,
                  normalization=((0.5,) * 3, (0.5,) * 3), batch_size=B)


def seconds(device: str, iterations: int) -> float:
    attack = ATTACKS.build("inverting_gradients", iterations=iterations, compile=False, device=device,
                           log_every=10**6)
    with policy(device, seed=0):
        start = time.perf_counter()
        rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(0))
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    assert torch.isfinite(rec.images).all(), f"non-finite reconstruction on {device}"
    return elapsed


def ms_per_iteration(device: str, few: int, many: int) -> float:
    seconds(device, few)  # warm-up: kernels, allocator, caches
    return (seconds(device, many) - seconds(device, few)) / (many - few) * 1000


cpu = ms_per_iteration("cpu", 5, 25)
gpu = ms_per_iteration("cuda", 20, 220)
print(json.dumps({"cpu_ms": round(cpu, 2), "cuda_ms": round(gpu, 2), "speedup": round(cpu / gpu, 1),
                  "cpu_threads": torch.get_num_threads()}))
PYTHON
timing_rc=$?
timing=$(tail -n 1 "$logs/timing.log")
if [ "$timing_rc" = 0 ]; then
    timing=$("$py" -c "
import json, sys
t = json.loads(sys.argv[1])
print(f\"cpu {t['cpu_ms']} ms/it ({t['cpu_threads']} threads), cuda {t['cuda_ms']} ms/it: {t['speedup']}x\")
" "$timing")
elif [ "$timing_rc" = 124 ]; then
    timing="timed out after 120 s"
fi

# -- the speed table (benchmarks/speed.py on the GPU; GPU_CHECK_SPEED=0 leaves it out) -------------------------------
speed_rc=0
speed_line="left out (GPU_CHECK_SPEED=0)"
if [ "${GPU_CHECK_SPEED:-1}" != 0 ]; then
    echo "speed table: benchmarks/speed.py --device cuda, IG, GIFD, restarts and private batches (log: $logs/speed.log)"
    timeout 600 "$py" benchmarks/speed.py --device cuda --sections ig,gifd,restarts,batches --threads "$threads" \
        --csv "$logs/speed.csv" >"$logs/speed.log" 2>&1
    speed_rc=$?
    speed_line="$logs/speed.log (exit $speed_rc)"
    [ "$speed_rc" = 124 ] && speed_line="timed out after 600 s; what it measured is in $logs/speed.log"
fi

# -- summary -----------------------------------------------------------------------------------------------------
status=PASS
code=0
# a speed table cut short by its time limit keeps what it measured and fails nothing; an error in it does
if [ "$tests_rc" != 0 ] || [ "$timing_rc" != 0 ] || { [ "$speed_rc" != 0 ] && [ "$speed_rc" != 124 ]; }; then
    status=FAIL
    code=1
fi
echo
echo "== fedinvert GPU check: $status =="
echo "device        : $device"
echo "device tests  : ${tests_line:-no pytest summary (exit $tests_rc)}"
echo "nondeterminism: ${kernels:-not reported} (kernels PyTorch named during the IG run)"
echo "timing (IG)   : $timing"
echo "speed table   : $speed_line"
echo "seconds       : $((SECONDS - started))"
echo "logs          : $logs"
if [ -s "$logs/speed.log" ]; then
    echo
    cat "$logs/speed.log"
fi
if [ "$tests_rc" != 0 ]; then
    echo
    echo "failed device tests (from $logs/tests.log):"
    grep -E "^(FAILED|ERROR)" "$logs/tests.log" | head -n 20
fi
exit "$code"
