"""Runtime choices: no torch import on the ONNX path, quiet provider selection, the IR
version the installed onnxruntime reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from model_helpers import cpu_onnx_backend

from deepergat.errors import DeepergatError

_NO_TORCH = r"""
import json, sys
import numpy as np
import deepergat.export
from deepergat.contract import DEFAULT_CUTOFF, DEFAULT_MAX_NEIGHBORS, MAX_Z
from deepergat.export import load
from deepergat.export.samples import parity_structures
from deepergat.graphs import build_inputs
p = load(sys.argv[1], device="auto", threads=1, cutoff=DEFAULT_CUTOFF,
         max_neighbors=DEFAULT_MAX_NEIGHBORS)
y, e, _ = p.predict(build_inputs(parity_structures(4), max_z=MAX_Z).inputs)
print(json.dumps({"torch": "torch" in sys.modules,
                  "torch_geometric": "torch_geometric" in sys.modules,
                  "shape": list(y.shape), "backend": p.backend, "device": p.device}))
"""


def test_onnx_load_and_predict_import_no_torch(exported_tiny):
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(exported_tiny["onnx"])],
                         capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "torch_geometric": False, "shape": [4, 1],
                      "backend": "onnxruntime" if result["device"].startswith("cuda")
                      else cpu_onnx_backend(), "device": result["device"]}
    # auto device on a machine without a GPU: no wall of CUDA errors on stderr
    from deepergat.export.runtime import cuda_available

    if not cuda_available():
        assert result["device"] == "cpu"
        assert out.stderr.strip() == "", out.stderr


def test_import_is_light():
    code = ("import sys, deepergat.export, deepergat.export.parity, deepergat.export.files; "
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


def test_max_ir_version_is_read_from_the_runtime():
    import onnx
    import onnxruntime as ort

    from deepergat.export.runtime import max_ir_version

    ir = max_ir_version()
    assert 8 <= ir <= onnx.IR_VERSION
    major, minor = (int(v) for v in ort.__version__.split(".")[:2])
    if (major, minor) == (1, 31):
        assert ir == 13  # onnxruntime(-gpu) 1.31 reads IR <= 13


def test_cuda_request_without_cuda_is_a_clear_error(exported_tiny, capfd):
    from deepergat.export import load
    from deepergat.export.runtime import cuda_available

    if cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeepergatError, match="device 'cuda' requested"):
        load(exported_tiny["onnx"], device="cuda")
    p = load(exported_tiny["onnx"], device="auto", runtime="onnxruntime")
    assert p.device == "cpu" and p.providers == ["CPUExecutionProvider"]
    assert load(exported_tiny["onnx"], device="auto").device == "cpu"  # OpenVINO where installed
    captured = capfd.readouterr()
    assert "CUDA" not in captured.err


def test_device_spellings():
    from deepergat.export.predictor import parse_device

    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("cuda:2", 2) == ("cuda", 2)
    assert parse_device("cuda", 3) == ("cuda", 3)
    assert parse_device("auto") == ("auto", 0)
    for bad in ("gpu", "cuda:x", "cuda:", "cuda:\u00b2", "cpu:0", ""):
        with pytest.raises(DeepergatError, match="device must be"):
            parse_device(bad)
    for other in (0, 2):
        with pytest.raises(DeepergatError, match="contradicts"):
            parse_device("cuda:1", other)
    with pytest.raises(DeepergatError, match="device_id"):
        parse_device("cuda", -1)


def test_torch_backends_on_cpu(exported_tiny):
    from deepergat.export import load

    for fmt in ("torchscript", "pt2", "checkpoint"):
        p = load(exported_tiny[fmt], device="cpu", threads=1, trust=True)
        assert p.device == "cpu"


_MALLOC = r"""
import sys
from deepergat.export import load, runtime
load(sys.argv[1], device="cpu", trust=True)
print(runtime._malloc_tuned)
"""


@pytest.mark.parametrize(("fmt", "env", "expected"),
                         [("torchscript", "1", "True"), ("torchscript", "0", "False"),
                          ("onnx", "1", "False")])
def test_malloc_tuning_only_for_torch_backends(exported_tiny, fmt, env, expected):
    import os
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", _MALLOC, str(exported_tiny[fmt])],
                         capture_output=True, text=True, check=True, timeout=120,
                         env={**os.environ, "DEEPERGAT_TUNE_MALLOC": env})
    assert out.stdout.split()[-1] == expected


def test_bundled_models_ship_a_current_onnx():
    """Each bundled model's model.onnx was exported from (and parity-checked against) the
    best.ckpt next to it; a bundled name loads the ONNX file."""
    import hashlib

    from deepergat.export import bundled_models, read_metadata, resolve_model
    from deepergat.export.resolve import bundled_dir

    names = bundled_models()
    if not names:
        pytest.skip("no bundled models installed")
    for name in names:
        folder = bundled_dir() / name
        if not (folder / "model.onnx").is_file():
            pytest.fail(f"bundled model {name} ships no model.onnx: run `deepergat export {name} "
                        f"--format onnx -o {folder}`")
        assert resolve_model(name).name == "model.onnx"
        ckpt = resolve_model(name, prefer="checkpoint")
        assert ckpt.name in ("ensemble.ckpt", "best.ckpt") and ckpt.parent == folder
        meta = read_metadata(folder / "model.onnx")
        ckpt_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        assert meta["source_sha256"] == ckpt_sha, f"{name}: model.onnx is stale; re-export it"
        assert meta["parity"]["passed"] and meta["parity"]["n_structures"] >= 256
