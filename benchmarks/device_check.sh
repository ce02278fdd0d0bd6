#!/usr/bin/env bash
# The prepared GPU check: one script, about 8 minutes on one GPU node, one table at the end.
#
#   bash benchmarks/device_check.sh            # on the GPU machine, from the repository root
#   DRY_RUN=1 bash benchmarks/device_check.sh  # here, on the CPU: every step, small sizes
#
# The device machine reaches no registry: first, here, `bash benchmarks/device_wheels.sh` puts
# the wheels it lacks (pymatgen and its needs, ASE) in .whl/, and the device call carries .whl:
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
#
# 1. install the carried wheels (.whl/, or WHEELS=<folder>) into /tmp/site, and this checkout
#    without touching the node's torch;
# 2. the GPU tests (pytest -m gpu: CUDA provider placement, CPU/GPU agreement of every format,
#    screening on cuda equals the CPU file);
# 3. model-alone throughput of every backend on cuda (bench_infer.py);
# 4. end-to-end screening of GPU_CANDIDATES generated candidates (default 1 M) on cuda with the
#    bundled single model and with the bundled ensemble, and the same files compared with a CPU
#    screen of their first 20,000 (the agreement rule);
# 5. training speed on cuda: TRAIN_EPOCHS epochs of the bundled recipe on a perovskite store,
#    in fp32, bf16 autocast and tf32
#    (PEROV=<store.h5>, else the test fixture's 300 structures), structures/s per epoch;
# 6. inference rate of every architecture on cuda (bench_infer.py --architectures), if time is
#    left (ARCH_CHECK=0 skips it).
#
# DRY_RUN=1 runs the same steps on the CPU with small sizes (GPU_CANDIDATES 2,000, 1 epoch,
# small batches), so the script stays green between GPU windows (run it before a window).
#
# Everything it writes goes to OUT (default $OUT on the device tool, else /tmp/device-check);
# the closing table is also in $OUT/table.md. Each step has its own time limit so one slow
# step cannot eat the window; a failed step is reported in the table, the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
  DEV=cpu; N=${GPU_CANDIDATES:-2000}; EPOCHS=${TRAIN_EPOCHS:-1}; SMALL_N=1000
  INFER_SIZES="64"; INFER_TIME=0.05; ARCH_BATCH=64; THREADS=1; ARCHS=(--archs deepergatgnn cgcnn)
else
  DEV=cuda; N=${GPU_CANDIDATES:-1000000}; EPOCHS=${TRAIN_EPOCHS:-20}; SMALL_N=20000
  INFER_SIZES="64 1024 4096 16384"; INFER_TIME=0.3; ARCH_BATCH=4096; THREADS=8; ARCHS=()
fi
DG=("$PY" -m deepergat.cli)  # the deepergat command, whatever PATH holds
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
WHEELS=${WHEELS:-.whl}
if [ "$DRY" != 1 ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  step "wheels" 240 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$WHEELS"/*.whl || true
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DRY" = 1 ]; then
  row "mode" "DRY RUN on the CPU" "small sizes; no figure here is a GPU figure"
else
  step "install" 180 "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "cannot install; stopping"; exit 1; }
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("onnxruntime", ort.__version__, ort.get_available_providers())
EOF
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>/dev/null)
row "device" "$GPU" "$("$PY" -c 'import onnxruntime as o; print(o.__version__, *o.get_available_providers())' 2>/dev/null)"

# ---- 2. GPU tests
if step "gpu tests" 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider; then
  row "GPU tests" "passed" "$(grep -E '[0-9]+ passed' "$LOG" | tail -1)"
else
  row "GPU tests" "FAILED" "$(grep -E 'passed|failed' "$LOG" | tail -1)"
fi

# ---- 3. model alone
# shellcheck disable=SC2086  # INFER_SIZES is a list
if step "bench_infer" 200 "$PY" benchmarks/bench_infer.py --devices "$DEV" --threads "$THREADS" \
    --sizes $INFER_SIZES --min-time "$INFER_TIME" --no-options; then
  row "model alone ($DEV)" "see log" "$(grep -A8 "^$DEV:" "$LOG" | tail -5 | tr '\n' ' ')"
fi

# ---- 4. end-to-end screening
# On the GPU machine the bundled checkpoints run on PyTorch's CUDA: onnxruntime-gpu is too large
# to carry (device_wheels.sh), so the .onnx files would find no CUDA provider there.
BUNDLED=deepergat/models
if [ "$DEV" = cuda ]; then
  MODELS=("$BUNDLED/perovskite-heat-single/best.ckpt" "$BUNDLED/perovskite-heat/ensemble.ckpt")
else
  MODELS=(perovskite-heat-single perovskite-heat)
fi
CAND="$OUT/candidates-$N.h5"
step "candidates" 120 "$PY" benchmarks/make_candidates.py -n "$N" -o "$CAND" || true
for model in "${MODELS[@]}"; do
  name=$(basename "$(dirname "$model")")
  [ "$name" = . ] && name=$model
  out="$OUT/$name.predictions.h5"
  if step "screen $name" 150 "${DG[@]}" screen --input "$CAND" --model "$model" --device "$DEV" \
      --output "$out" --no-resume; then
    rate=$(grep -E "screened [0-9]+ structures" "$LOG" | tail -1)
    row "screen $name ($N, $DEV)" "ok" "$rate"
  else
    row "screen $name ($N, $DEV)" "FAILED" "-"
  fi
done
SMALL="$OUT/candidates-$SMALL_N.h5"
step "small candidates" 60 "$PY" benchmarks/make_candidates.py -n "$SMALL_N" -o "$SMALL" || true
# the reference every other path is held to: the .onnx file on ONNX Runtime's CPU provider;
# the candidate: the first model above on $DEV (a dry run: the CPU default, OpenVINO)
DEEPERGAT_ONNX_RUNTIME=onnxruntime step "screen small reference" 120 "${DG[@]}" screen \
  --input "$SMALL" --model perovskite-heat-single --device cpu \
  --output "$OUT/small-reference.h5" --no-resume || true
step "screen small $DEV" 120 "${DG[@]}" screen --input "$SMALL" --model "${MODELS[0]}" \
  --device "$DEV" --output "$OUT/small-$DEV.h5" --no-resume || true
"$PY" - "$OUT" "$DEV" >>"$LOG" 2>&1 <<'EOF' && row "$DEV file = reference file (agreement rule)" "yes" "$SMALL_N candidates" || row "$DEV file = reference file" "NO" "see log"
import sys, h5py, numpy as np
out, dev = sys.argv[1], sys.argv[2]
with h5py.File(f"{out}/small-reference.h5") as a, h5py.File(f"{out}/small-{dev}.h5") as b:
    for key in ("index", "status", "flags"):
        assert np.array_equal(a[key][:], b[key][:]), key
    import json
    from deepergat.export import agree  # docs/design.md §10, the rule every path is held to
    stds = {t["name"]: t["std"] for t in json.loads(a.attrs["model_metadata"])["targets"]}
    for name in a["predictions"]:
        y1, y2 = a["predictions"][name][:], b["predictions"][name][:]
        assert agree(y1[:, None], y2[:, None], [stds[name]]).all(), name
print(f"the {dev} file and the reference agree")
EOF

# ---- 5. training on the GPU
STORE=${PEROV:-}
if [ -z "$STORE" ]; then
  STORE="$OUT/perov-sample.h5"
  "${DG[@]}" pack tests/data/perov5_sample.csv --cif-column cif --id-column material_id \
    --target heat_ref:eV -o "$STORE" >>"$LOG" 2>&1
fi
PRECISIONS=(fp32 bf16)
if [ "$DEV" = cuda ]; then PRECISIONS+=(tf32); fi
for PREC in "${PRECISIONS[@]}"; do
  rm -rf "$OUT/train-$DEV-$PREC"  # a rerun in the same folder trains again, not --resume
  if step "train $DEV $PREC" 150 "${DG[@]}" train --data "$STORE" --target heat_ref \
      --epochs "$EPOCHS" --graph minimum-image --distance-scale data --device "$DEV" \
      --precision "$PREC" --out "$OUT/train-$DEV-$PREC"; then
    per=$("$PY" - "$OUT/train-$DEV-$PREC/metrics.csv" "$STORE" <<'EOF'
import csv, sys, statistics, h5py
rows = list(csv.DictReader(open(sys.argv[1])))
sec = statistics.median(float(r["seconds"]) for r in rows[1:] or rows)
n = int(h5py.File(sys.argv[2])["n_atoms"].shape[0] * 0.9)
mae = float(rows[-1]["val_mae"])
print(f"{sec:.2f} s/epoch, {n / sec:.0f} training structures/s, last val MAE {mae:.4f}")
EOF
)
    row "training ($DEV, $PREC, $EPOCHS epochs)" "ok" "$per"
  else
    row "training ($DEV, $PREC, $EPOCHS epochs)" "FAILED" "see $LOG"
  fi
done

# ---- 6. every architecture's inference rate
if [ "${ARCH_CHECK:-1}" != 0 ] && step "architectures" 150 "$PY" benchmarks/bench_infer.py \
    --architectures --devices "$DEV" --threads "$THREADS" --min-time "$INFER_TIME" \
    --arch-batch "$ARCH_BATCH" "${ARCHS[@]}" >"$OUT/architectures.txt" 2>&1; then
  row "architectures ($DEV, batch $ARCH_BATCH)" "ok" "see architectures.txt"
fi

# ---- the table
{
  echo "| check | result | figures |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)"
} | tee "$OUT/table.md"
