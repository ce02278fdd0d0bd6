# shellcheck shell=bash
# Site specifics, in one place: sourced by every deepergat sbatch script.
#
# Edit the defaults below for your cluster once, or set the variables in the environment of
# `sbatch` / `slurm/submit.sh` (sbatch passes the submitting environment to the job).
#
#   SITE_MODULES     modules to load, e.g. "cuda/12.4 cudnn/9" (empty: none)
#   DEEPERGAT_VENV   a virtual environment with deepergat installed (empty: the current Python)
#   SRUN_MPI         srun's --mpi plugin, matching the MPI that mpi4py is built against:
#                    pmi2 for the mpich wheel (`pip install mpich mpi4py`, what the tests use),
#                    pmix for most Open MPI builds, or the site's recommendation. To use the
#                    site's MPI (InfiniBand, Slingshot, ...), rebuild mpi4py against it:
#                      module load <site mpi>; pip uninstall -y mpich mpi4py
#                      pip install --no-binary=mpi4py --no-cache-dir mpi4py
#                    and set SRUN_MPI to what the site documents (often pmix).
#   DEEPERGAT_SCREEN deepergat-screen command (default: the console script)
#   DEEPERGAT        deepergat command (default: the console script)

SITE_MODULES="${SITE_MODULES:-}"
DEEPERGAT_VENV="${DEEPERGAT_VENV:-}"
SRUN_MPI="${SRUN_MPI:-pmi2}"
DEEPERGAT_SCREEN="${DEEPERGAT_SCREEN:-deepergat-screen}"
DEEPERGAT="${DEEPERGAT:-deepergat}"

site_setup() {
  if [ -n "$SITE_MODULES" ]; then
    if command -v module >/dev/null 2>&1; then
      # shellcheck disable=SC2086
      module load $SITE_MODULES
    else
      echo "site.sh: SITE_MODULES is set but there is no 'module' command" >&2
    fi
  fi
  if [ -n "$DEEPERGAT_VENV" ]; then
    # shellcheck disable=SC1091
    source "$DEEPERGAT_VENV/bin/activate"
  fi
  # One rank's threads on its own cores; Python output straight into the job log.
  export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
  export PYTHONUNBUFFERED=1
}
