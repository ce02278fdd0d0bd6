"""From a screen to a short list: --where parsing (never eval), extract (files ready for DFT
and selection.csv, refused when the store changed), read_predictions, the HTML report
(rendered in headless Chromium when it is installed)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from screen_helpers import read_predictions, run_inprocess

from deepergat.cli import main
from deepergat.errors import DeepergatError, SettingError
from deepergat.screening.select import extract


@pytest.fixture(scope="module")
def screened(tmp_path_factory: pytest.TempPathFactory, screen_store: Path,
             small_ensemble: dict[str, Any]) -> dict[str, Path]:
    """The screening store screened by the session ensemble, with embeddings."""
    root = tmp_path_factory.mktemp("screened")
    store = root / "cands.h5"
    shutil.copyfile(screen_store, store)
    out = root / "cands.predictions.h5"
    run_inprocess(store, small_ensemble["onnx"], out, chunk_size=64, embeddings=True)
    return {"store": store, "predictions": out}


def test_where_rows_match_numpy(screened: dict[str, Path]) -> None:
    """A ``where`` without ``top``: every row it allows (ranked ones first, then the rest in
    file order), none other; the same rows numpy's comparisons give."""
    from deepergat.screening.shortlist import ListSettings, short_list

    p = read_predictions(screened["predictions"])
    y, s = p["predictions"]["heat_ref"], p["std"]["heat_ref"]
    cut = float(np.nanmedian(y))
    listed = short_list(screened["predictions"], ListSettings(
        where=f"heat_ref < {cut} and heat_ref_std > 0 or flags == 1", group=False))
    with np.errstate(invalid="ignore"):
        want = np.flatnonzero(((y < cut) & (s > 0)) | (p["flags"] == 1))
    np.testing.assert_array_equal(np.sort(listed.rows), want)


def test_extract_writes_files_ready_for_dft(screened: dict[str, Path], tmp_path: Path) -> None:
    from ase.io import read as ase_read

    from deepergat.io.store import Store

    out = tmp_path / "short"
    r = CliRunner().invoke(main, ["extract", str(screened["predictions"]), "--top", "5",
                                  "-o", str(out), "--format", "poscar"])
    assert r.exit_code == 0, r.output
    with open(out / "selection.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "formula", "heat_ref", "heat_ref_std", "status", "flags",
                             "file", "group_size", "members", "known"]
    assert all(int(r["group_size"]) >= 1 and r["members"].split(";")[0] == r["id"] for r in rows)
    p = read_predictions(screened["predictions"])
    by_id = {sid: k for k, sid in enumerate(p["ids"])}
    values = [float(r["heat_ref"]) for r in rows]
    assert values == sorted(values) and len(rows) == 5
    with Store(screened["store"]) as s:
        for r in rows:
            k = by_id[r["id"]]
            assert float(r["heat_ref"]) == pytest.approx(p["predictions"]["heat_ref"][k])
            atoms = ase_read(out / r["file"], format="vasp")
            want = s.read(k, k + 1).structure(0)
            np.testing.assert_allclose(atoms.cell.array, want["lattice"], atol=1e-6)
            np.testing.assert_array_equal(atoms.numbers, want["atomic_numbers"])
    picked = [p["ids"][0], "cluster-nonperiodic", "bad-zero-atoms"]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(picked) + "\n")
    r = CliRunner().invoke(main, ["extract", str(screened["predictions"]), "--ids", str(ids),
                                  "-o", str(tmp_path / "picked")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "picked" / "selection.csv", newline="") as fh:
        files = {row["id"]: row["file"] for row in csv.DictReader(fh)}
    assert list(files) == picked
    assert files[picked[0]] == f"1_{picked[0]}.cif"  # as asked
    assert files["cluster-nonperiodic"] == "2_cluster-nonperiodic.extxyz"  # no cell for CIF
    assert files["bad-zero-atoms"] == ""  # nothing to write
    assert sorted(f.name for f in (tmp_path / "picked").iterdir()) == sorted(
        [files[picked[0]], files["cluster-nonperiodic"], "selection.csv"])
    with pytest.raises(DeepergatError, match="with ids, or with top and/or where"):
        extract(screened["predictions"], tmp_path / "x", top=3, ids=["a"])
    with pytest.raises(DeepergatError, match="no structure with id nope"):
        extract(screened["predictions"], tmp_path / "y", ids=["nope"])


def test_extract_and_report_errors_name_their_flags(screened: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """The library names settings (``ids``, ``fmt``); the commands write their flags."""
    pred = str(screened["predictions"])
    ids = tmp_path / "ids.txt"
    ids.write_text("x\n")
    for argv, line in [
        (["extract", pred, "--top", "3", "--ids", str(ids), "-o", str(tmp_path / "a")],
         "error: choose the structures with --ids, or with --top and/or --where"),
        (["extract", pred, "--where", "gap < 1", "-o", str(tmp_path / "b")],
         "error: --where 'gap < 1': no column 'gap'; columns: heat_ref, heat_ref_std, status, "
         "flags, n_elements, group_size, and has(El), formula, novel, known"),
        (["extract", pred, "--top", "2", "--rank-k", "-1", "-o", str(tmp_path / "c")],
         "error: --rank-k must be a finite number ≥ 0, got -1.0"),
    ]:
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2 and r.stderr.strip() == line, r.stderr
    with pytest.raises(SettingError) as e:
        extract(pred, tmp_path / "d", top=1, fmt="xyz")  # type: ignore[arg-type]
    assert str(e.value) == "fmt 'xyz': choose cif, poscar or extxyz"
    assert e.value.render({"fmt": "--format"}).startswith("--format 'xyz'")


def test_extract_again_into_a_folder_leaves_only_the_new_selection(
        screened: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "short"
    first = extract(screened["predictions"], out, top=3)
    assert len([f for f in first.files if f is not None]) == 3
    second = extract(screened["predictions"], out, top=1)
    kept = sorted(f.name for f in out.iterdir())
    assert kept == sorted([second.files[0].name, "selection.csv"])  # no stale structures
    ids = [first.files[0].name.split("_", 1)[1].rsplit(".", 1)[0]] * 2
    again = extract(screened["predictions"], tmp_path / "twice", ids=ids)
    assert len(again.files) == 1  # an id listed twice is one structure
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DeepergatError, match=r"holds other files \(notes.txt\)"):
        extract(screened["predictions"], out, top=2)
    assert (out / "notes.txt").read_text() == "mine" and (out / second.files[0].name).is_file()


def test_extract_refuses_a_changed_store(screened: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "cands.h5"
    shutil.copyfile(screened["store"], store)
    with h5py.File(store, "r+") as f:
        f["positions"][0] = f["positions"][0] + 0.5
    with pytest.raises(DeepergatError, match=r"is not the store .* was screened on"):
        extract(screened["predictions"], tmp_path / "x", top=3, store=store)


def test_read_predictions_is_a_dataframe(screened: dict[str, Path]) -> None:
    pytest.importorskip("pandas")
    import deepergat

    df = deepergat.read_predictions(str(screened["predictions"]), embeddings=True)
    p = read_predictions(screened["predictions"])
    assert list(df.columns) == ["index", "id", "heat_ref", "heat_ref_std", "status", "flags",
                                "formula", "n_elements", "embedding"]
    assert len(df) == 300 and df["id"].tolist() == p["ids"]
    np.testing.assert_array_equal(df["status"].to_numpy(), p["status"])
    # each row's formula and element count, as written by the screen, are its structure's
    from deepergat.elements import formula
    from deepergat.io.store import Store

    with Store(screened["store"]) as s:
        want = [s.atomic_numbers(int(r), int(r) + 1) for r in df["index"]]
    assert df["formula"].tolist() == [formula(z) for z in want]
    assert df["n_elements"].tolist() == [len(set(z.tolist())) for z in want]


def test_report_renders_in_a_browser(screened: dict[str, Path], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", str(screened["predictions"]), "-o", str(page),
                                  "--top", "7"])
    assert r.exit_code == 0, r.output
    text = page.read_text()
    # the histogram, the element map and the embedding map
    assert text.count("data:image/png;base64,") == 3
    assert "<script" not in text and "http" not in text.split("<body>")[1]  # self-contained
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium to render the report (.ci/run installs Debian's)")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout
    table = dom.split("id=\"top-table\"")[1].split("</table>")[0]
    p = read_predictions(screened["predictions"])
    ok = np.flatnonzero(np.isfinite(p["predictions"]["heat_ref"]))
    best = ok[np.argsort(p["predictions"]["heat_ref"][ok], kind="stable")[:7]]
    assert table.count("<tr>") == 8  # header + 7 rows
    for k in best:
        assert p["ids"][k] in table
