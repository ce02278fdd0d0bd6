#!/usr/bin/env bash
# Download, here, the wheels a lent GPU machine lacks, into .whl/ (git-ignored through
# .git/info/exclude), for its Python 3.12 on x86-64; device_check.sh installs them there.
#
#   bash benchmarks/device_wheels.sh            # from the repository root, with network
#
# The GPU image has PyTorch, numpy, scipy, h5py, numba, pandas, matplotlib, click, pyyaml, tqdm,
# onnx and a CPU onnxruntime; it lacks the structure libraries (pymatgen and what it needs,
# ASE; plotly, which the code paths used here never import, is left out). onnxruntime-gpu (~300 MB) is over the 64 MiB a device call carries, so
# .onnx files run on that machine's CPU onnxruntime and the GPU checks use the torch backends.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE=$(git rev-parse --git-path info/exclude)  # a worktree's too
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"
mkdir -p .whl
PYVER=${PYVER:-3.12}  # the GPU image's python3 (KINDS.md of the device tool)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
for req in "pymatgen" "pymatgen-core" "monty" "spglib" "ruamel.yaml" "ruamel.yaml.clib" \
           "uncertainties" "palettable" "orjson" "bibtexparser<2" "ase"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d .whl "$req"
done
du -sh .whl
echo "carry .whl in the device call (benchmarks/device_check.sh installs it)"
