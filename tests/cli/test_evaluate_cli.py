"""`deepergat evaluate --goal`: the screening metrics' lines, JSON keys and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from deepergat.cli import main

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def _documented_keys() -> set[str]:
    """The backticked names of design.md's "Screening metrics" paragraph."""
    text = DESIGN.read_text()
    start = text.index("**Screening metrics**")
    paragraph = text[start : text.index("\n\n", start)]
    return set(re.findall(r"`([a-z_0-9]+)`", paragraph))


def _json_keys(doc: Any) -> set[str]:
    if isinstance(doc, dict):
        return set(doc) | {k for v in doc.values() for k in _json_keys(v)}
    if isinstance(doc, list):
        return {k for v in doc for k in _json_keys(v)}
    return set()


def test_goal_prints_the_lists_and_writes_documented_keys(small_ensemble: dict[str, Any],
                                                          tiny_store: Path,
                                                          tmp_path: Path) -> None:
    js = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["evaluate", str(small_ensemble["onnx"]), "--data",
                                  str(tiny_store), "--target", "heat_ref", "--goal", "min",
                                  "--top-fraction", "0.1", "--top-fraction", "0.5",
                                  "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "top-K lists (goal min; a hit is in the true top K):" in r.output
    assert "top 10 % (K 6 of 60) by mean: precision" in r.output
    assert "top 50 % (K 30 of 60) by upper (mean + 1σ): precision" in r.output
    doc = json.loads(js.read_text())
    screening = doc["screening"]
    assert list(screening["rankings"]) == ["mean", "upper"] and screening["rank_k"] == 1.0
    assert [r["top_k"] for r in screening["rankings"]["upper"]] == [6, 30]
    # every key written is one design.md §6 documents ("mean"/"upper" are ranking names)
    keys = _json_keys(screening) | {"screening"}
    assert keys <= _documented_keys() | {"mean", "upper"}, keys - _documented_keys()


def test_without_goal_the_output_is_unchanged(small_model: dict[str, Any], tiny_store: Path,
                                              tmp_path: Path) -> None:
    js = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["evaluate", str(small_model["onnx"]), "--data",
                                  str(tiny_store), "--target", "heat_ref", "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "top-K" not in r.output and len(r.output.strip().splitlines()) == 1
    assert set(json.loads(js.read_text())) == {"target", "units", "n", "mae", "rmse", "r2"}
    r = CliRunner().invoke(main, ["evaluate", str(small_model["onnx"]), "--data",
                                  str(tiny_store), "--target", "heat_ref", "--goal", "max",
                                  "--hit-threshold", "-1.0"])
    assert r.exit_code == 0, r.output
    assert re.search(r"a hit is true heat_ref ≥ -1 eV: \d+ of 60, prevalence", r.output)
    assert "upper" not in r.output and "lower" not in r.output  # no spread, no bound


def test_screening_settings_are_one_line_errors(tiny_store: Path, tmp_path: Path) -> None:
    base = ["evaluate", str(tmp_path / "unused.ckpt"), "--data", str(tiny_store), "--target",
            "heat_ref"]
    for extra, message in [
        (["--hit-threshold", "0"], "error: --hit-threshold needs --goal min or max"),
        (["--top-fraction", "0.2"], "error: --top-fraction needs --goal min or max"),
        (["--rank-k", "2"], "error: --rank-k needs --goal min or max"),
        (["--goal", "min", "--top-fraction", "1.5"], "error: --top-fraction 1.5: must lie in"),
        (["--goal", "max", "--rank-k", "-1"], "error: --rank-k must be a finite number ≥ 0"),
    ]:
        r = CliRunner().invoke(main, base + extra)
        assert r.exit_code == 2, (extra, r.output)
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
