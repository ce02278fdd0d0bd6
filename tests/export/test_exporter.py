"""`deepergat.export.export_model`: a file reaches its final name only after every requested
format passed its parity check; a failed check leaves the folder as it was; what the result
and the files' metadata say.

The source is the starting commit's 2-layer DeeperGATGNN checkpoint in tests/data/legacy/ (an
export of an older checkpoint must work). Every format's round trip is in
test_export_roundtrip.py, the command line (killed exports, the folder lock) in
test_export_cli.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepergat.errors import DeepergatError
from deepergat.export import FILE_NAMES, export_model, read_metadata
from deepergat.export import exporter as exporter_module

pytest.importorskip("torch")

SOURCE = Path(__file__).resolve().parents[1] / "data" / "legacy" / "deepergatgnn.ckpt"
FAST = {"n_check": exporter_module.MIN_CHECK, "big_batch": 300}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_formats_and_their_file_names() -> None:
    assert FILE_NAMES == {"onnx": "model.onnx", "torchscript": "model.pt", "pt2": "model.pt2",
                          "aoti": "model.aoti.pt2"}
    assert exporter_module.ALL_FORMATS == ("onnx", "torchscript", "pt2")  # aoti: on request


@pytest.mark.slow
def test_a_file_gets_its_name_only_after_its_check_passed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    final = out / "model.pt"
    seen: list[tuple[str, bool]] = []
    result = export_model(SOURCE, out, formats="torchscript",
                          progress=lambda m: seen.append((m, final.exists())), **FAST)
    assert [m.split(" (")[0] for m, _ in seen] == [
        "parity cases from 256 generated structures", "eager reference on 563 predictions in 9 "
        "batches", "torchscript: exporting", "torchscript: parity check", "torchscript: parity ok"]
    assert not any(existed for _, existed in seen)  # not even once its check had passed
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]  # no staging file, no lock
    (written,) = result.files
    assert (written.format, written.path) == ("torchscript", final)
    assert written.size == final.stat().st_size and written.sha256 == _sha256(final)
    assert written.parity.passed and written.parity.n_structures >= 256
    assert result.source == SOURCE and result.check_source.startswith("256 generated")
    assert set(result.example_sizes) == {"N", "K", "C", "A"}
    meta = read_metadata(final)
    assert meta["kind"] == "deepergat-torchscript" and meta["checkpoint_format"] == 1
    assert meta["source_sha256"] == _sha256(SOURCE)
    assert meta["parity"] == json.loads(json.dumps(written.parity.to_dict()))
    assert meta["exporter"]["example_sizes"] == result.example_sizes


@pytest.mark.slow
def test_one_failed_format_writes_none_and_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchscript passes, pt2 fails: neither reaches its name, earlier files stay as they
    were, nothing of this run is left."""
    real = exporter_module.compare

    def pt2_disagrees(cases: Any, reference: Any, candidate: Any, std: Any, **kw: Any) -> Any:
        if kw["backend"].startswith("torch.export"):
            candidate = [c._replace(prediction=c.prediction + np.float32(1e-3))
                         for c in candidate]
        return real(cases, reference, candidate, std, **kw)

    monkeypatch.setattr(exporter_module, "compare", pt2_disagrees)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"model.pt": b"an earlier export", "model.pt2": b"another", "notes.txt": b"mine"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    with pytest.raises(DeepergatError) as e:
        export_model(SOURCE, out, formats=["torchscript", "pt2"], **FAST)
    message = str(e.value)
    assert f"export of {SOURCE} failed its parity check; no files written to {out}: " in message
    assert "pt2: " in message and "first disagreement" in message
    assert "torchscript: " not in message  # it passed
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier


@pytest.mark.parametrize(("formats", "message"), [
    ("tflite", "unknown export format 'tflite'; one of onnx, torchscript, pt2, aoti or all"),
    (["onnx", "nope"], "unknown export format 'nope'"),
    ([], "no export format given"),
])
def test_bad_formats_are_refused_before_anything_is_written(
    tmp_path: Path, formats: Any, message: str
) -> None:
    with pytest.raises(DeepergatError, match=message):
        export_model(SOURCE, tmp_path / "out", formats=formats)
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(DeepergatError, match=rf"{out}: exists and is not a folder"):
        export_model(SOURCE, out, formats="torchscript")
    assert out.read_text() == "a file"
