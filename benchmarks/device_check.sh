#!/usr/bin/env bash
# The prepared GPU check: one script, about 8 minutes on one GPU node, one table at the end.
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repository root
#
# 1. install this checkout without touching the node's torch (and, when WHEELS=<folder> holds
#    them, onnxruntime-gpu and the other wheels a node without network lacks);
# 2. the GPU tests (pytest -m gpu: CUDA provider placement, CPU/GPU agreement of every format,
#    screening on cuda equals the CPU file);
# 3. model-alone throughput of every backend on cuda (bench_infer.py);
# 4. end-to-end screening of GPU_CANDIDATES generated candidates (default 1 M) on cuda with the
#    bundled single model and with the bundled ensemble, and the same files compared with a CPU
#    screen of their first 20,000 (the agreement rule);
# 5. training speed on cuda: TRAIN_EPOCHS epochs of the bundled recipe on a perovskite store
#    (PEROV=<store.h5>, else the test fixture's 300 structures), structures/s per epoch;
# 6. inference rate of every architecture on cuda (bench_infer.py --architectures), if time is
#    left (ARCH_CHECK=0 skips it).
#
# Everything it writes goes to OUT (default $OUT on the device tool, else /tmp/device-check);
# the closing table is also in $OUT/table.md. Each step has its own time limit so one slow
# step cannot eat the window; a failed step is reported in the table, the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
N=${GPU_CANDIDATES:-1000000}
EPOCHS=${TRAIN_EPOCHS:-20}
LOG="$OUT/device_check.log"
: >"$LOG"
declare -a ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); }
step() {  # step NAME SECONDS COMMAND...: run with a limit, log everything, record pass/fail
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$LOG"
  if timeout "$limit" "$@" >>"$LOG" 2>&1; then
    echo "   ok ($((SECONDS - t0)) s)" | tee -a "$LOG"; return 0
  fi
  echo "   FAILED ($((SECONDS - t0)) s; see $LOG)" | tee -a "$LOG"; return 1
}

# ---- 1. install
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  step "wheels" 240 python -m pip install -q --no-index --find-links "$WHEELS" \
    onnxruntime-gpu numba h5py click pyyaml tqdm mpi4py || true
fi
step "install" 180 python -m pip install -q --no-deps --no-build-isolation -e . \
  || { echo "cannot install; stopping"; exit 1; }
python - >>"$LOG" 2>&1 <<'EOF'
import torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("onnxruntime", ort.__version__, ort.get_available_providers())
EOF
GPU=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>/dev/null)
row "device" "$GPU" "$(python -c 'import onnxruntime as o; print(o.__version__, *o.get_available_providers())' 2>/dev/null)"

# ---- 2. GPU tests
if step "gpu tests" 240 python -m pytest -q -m gpu -p no:cacheprovider; then
  row "GPU tests" "passed" "$(grep -E '[0-9]+ passed' "$LOG" | tail -1)"
else
  row "GPU tests" "FAILED" "$(grep -E 'passed|failed' "$LOG" | tail -1)"
fi

# ---- 3. model alone
if step "bench_infer" 200 python benchmarks/bench_infer.py --devices cuda --threads 8 \
    --sizes 64 1024 4096 16384 --min-time 0.3 --no-options; then
  row "model alone (cuda)" "see log" "$(grep -A8 '^cuda:' "$LOG" | tail -5 | tr '\n' ' ')"
fi

# ---- 4. end-to-end screening
CAND="$OUT/candidates-$N.h5"
step "candidates" 120 python benchmarks/make_candidates.py -n "$N" -o "$CAND" || true
for model in perovskite-heat-single perovskite-heat; do
  out="$OUT/$model.predictions.h5"
  if step "screen $model" 150 deepergat-screen --input "$CAND" --model "$model" --device cuda \
      --output "$out" --no-resume; then
    rate=$(grep -E "screened [0-9]+ structures" "$LOG" | tail -1)
    row "screen $model ($N, cuda)" "ok" "$rate"
  else
    row "screen $model ($N, cuda)" "FAILED" "-"
  fi
done
SMALL="$OUT/candidates-20000.h5"
step "small candidates" 60 python benchmarks/make_candidates.py -n 20000 -o "$SMALL" || true
for dev in cpu cuda; do
  step "screen 20k $dev" 120 deepergat-screen --input "$SMALL" --model perovskite-heat-single \
    --device "$dev" --output "$OUT/small-$dev.h5" --no-resume || true
done
python - "$OUT" >>"$LOG" 2>&1 <<'EOF' && row "cuda file = cpu file (agreement rule)" "yes" "20,000 candidates" || row "cuda file = cpu file" "NO" "see log"
import sys, h5py, numpy as np
out = sys.argv[1]
with h5py.File(f"{out}/small-cpu.h5") as a, h5py.File(f"{out}/small-cuda.h5") as b:
    for key in ("index", "status", "flags"):
        assert np.array_equal(a[key][:], b[key][:]), key
    std = 0.7  # heat_ref's training std, eV
    for name in a["predictions"]:
        y1, y2 = a["predictions"][name][:], b["predictions"][name][:]
        ok = np.isfinite(y1)
        ulp = np.spacing(np.abs(y1[ok]).astype(np.float32)).astype(np.float64)
        assert (np.abs(y1[ok] - y2[ok]) <= 1e-5 * std * 10 + 4 * ulp).all(), name
print("cuda and cpu files agree")
EOF

# ---- 5. training on the GPU
STORE=${PEROV:-}
if [ -z "$STORE" ]; then
  STORE="$OUT/perov-sample.h5"
  deepergat pack tests/data/perov5_sample.csv --cif-column cif --id-column material_id \
    --target heat_ref:eV -o "$STORE" >>"$LOG" 2>&1
fi
if step "train cuda" 150 deepergat train --data "$STORE" --target heat_ref --epochs "$EPOCHS" \
    --graph minimum-image --distance-scale data --device cuda --out "$OUT/train-cuda"; then
  per=$(python - "$OUT/train-cuda/metrics.csv" "$STORE" <<'EOF'
import csv, sys, statistics, h5py
rows = list(csv.DictReader(open(sys.argv[1])))
sec = statistics.median(float(r["seconds"]) for r in rows[1:] or rows)
n = int(h5py.File(sys.argv[2])["n_atoms"].shape[0] * 0.9)
print(f"{sec:.2f} s/epoch, {n / sec:.0f} training structures/s")
EOF
)
  row "training (cuda, $EPOCHS epochs)" "ok" "$per"
fi

# ---- 6. every architecture's inference rate
if [ "${ARCH_CHECK:-1}" != 0 ] && step "architectures" 150 python benchmarks/bench_infer.py \
    --architectures --devices cuda --threads 8 --min-time 0.5 --arch-batch 4096 \
    >"$OUT/architectures.txt" 2>&1; then
  row "architectures (cuda, batch 4096)" "ok" "see architectures.txt"
fi

# ---- the table
{
  echo "| check | result | figures |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)"
} | tee "$OUT/table.md"
