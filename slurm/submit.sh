#!/bin/bash
# Submit deepergat SLURM jobs, with resources overridable from the environment.
#
#   slurm/submit.sh screen  [sbatch options]   multi-node MPI screening (screen.sbatch)
#   slurm/submit.sh array   [sbatch options]   array screening + merge (afterany dependency)
#   slurm/submit.sh train   [sbatch options]   multi-node training (train.sbatch)
#
# Resource knobs (unset: the #SBATCH defaults in the script):
#   NODES, TASKS_PER_NODE, GPUS_PER_TASK (0: no GPU request), CPUS_PER_TASK, MEM, TIME,
#   PARTITION, ACCOUNT; for `array` also ARRAY (e.g. 0-15), MERGE_MEM, MERGE_TIME.
# Job knobs (INPUT, MODEL, OUTPUT, CHUNK_SIZE, SCREEN_ARGS; DATA, TARGET, RUN_DIR, TRAIN_ARGS) are
# read by the .sbatch scripts from the environment, which sbatch passes on.
# Prints the job ids, one per line (array: the array job, then the merge job).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEEPERGAT_SLURM_DIR="$HERE"

kind="${1:?usage: slurm/submit.sh screen|array|train [sbatch options]}"
shift

resources() {
  local -n out=$1
  out=()
  if [ -n "${NODES:-}" ]; then out+=(--nodes="$NODES"); fi
  if [ -n "${TASKS_PER_NODE:-}" ]; then out+=(--ntasks-per-node="$TASKS_PER_NODE"); fi
  if [ -n "${GPUS_PER_TASK:-}" ]; then out+=(--gpus-per-task="$GPUS_PER_TASK"); fi
  if [ -n "${CPUS_PER_TASK:-}" ]; then out+=(--cpus-per-task="$CPUS_PER_TASK"); fi
  if [ -n "${MEM:-}" ]; then out+=(--mem="$MEM"); fi
  if [ -n "${TIME:-}" ]; then out+=(--time="$TIME"); fi
  if [ -n "${PARTITION:-}" ]; then out+=(--partition="$PARTITION"); fi
  if [ -n "${ACCOUNT:-}" ]; then out+=(--account="$ACCOUNT"); fi
}

case "$kind" in
  screen|train)
    resources flags
    sbatch --parsable "${flags[@]}" "$@" "$HERE/$kind.sbatch"
    ;;
  array)
    resources flags
    if [ -n "${ARRAY:-}" ]; then flags+=(--array="$ARRAY"); fi
    array_job=$(sbatch --parsable "${flags[@]}" "$@" "$HERE/screen-array.sbatch")
    array_job="${array_job%%;*}"
    merge=(--dependency=afterany:"$array_job")
    if [ -n "${MERGE_MEM:-}" ]; then merge+=(--mem="$MERGE_MEM"); fi
    if [ -n "${MERGE_TIME:-}" ]; then merge+=(--time="$MERGE_TIME"); fi
    if [ -n "${PARTITION:-}" ]; then merge+=(--partition="$PARTITION"); fi
    if [ -n "${ACCOUNT:-}" ]; then merge+=(--account="$ACCOUNT"); fi
    merge_job=$(sbatch --parsable "${merge[@]}" "$@" "$HERE/merge.sbatch")
    echo "$array_job"
    echo "${merge_job%%;*}"
    ;;
  *)
    echo "slurm/submit.sh: unknown job kind '$kind' (screen, array or train)" >&2
    exit 2
    ;;
esac
