"""The command line, in-process (click) and as real processes: MPI ranks give the same file as
one process, SIGKILL then rerun gives the same file, an ONNX screen never imports torch, errors
are one line with exit code 2, ``deepergat info`` describes the output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from screen_helpers import (
    REPO,
    assert_same_predictions,
    run_cli,
    run_inprocess,
    screen_cmd,
    screen_env,
)

from deepergat.cli.screen import screen
from deepergat.screening.parts import PartsDir


def args(store: Path, model: Path, out: Path, *more: str) -> list[str]:
    return ["--input", str(store), "--model", str(model), "--output", str(out), *more]


# ------------------------------------------------------------------------------ in-process


def test_help_and_group_command() -> None:
    from deepergat.cli import main

    r = CliRunner().invoke(main, ["screen", "--help"])
    assert r.exit_code == 0
    for flag in ("--input", "--model", "--output", "--chunk-size", "--device", "--workers",
                 "--shard", "--max-atoms", "--overlap-threshold", "--embeddings", "--top",
                 "--top-order", "--no-resume", "--merge-only"):
        assert flag in r.output, flag


def test_errors_are_one_line_exit_2(tmp_path: Path, screen_store: Path,
                                    small_model: dict[str, Any]) -> None:
    r = CliRunner().invoke(screen, args(tmp_path / "absent.h5", small_model["onnx"],
                                        tmp_path / "o.h5"))
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "absent.h5" in lines[0]
    r = CliRunner().invoke(screen, args(screen_store, small_model["onnx"], tmp_path / "o.h5",
                                        "--shard", "5/2"))
    assert r.exit_code == 2 and "--shard" in r.stderr


def test_errors_name_the_flags(tmp_path: Path, screen_store: Path,
                               small_model: dict[str, Any], reference_predictions: Path) -> None:
    """The library's messages name settings (``max_atoms``); the command writes its flags."""
    onnx = small_model["onnx"]
    out = tmp_path / "o.h5"
    for more, line in [
        (("--max-atoms", "0"), "error: --max-atoms must be at least 1, got 0"),
        (("--overlap-threshold", "-1"), "error: --overlap-threshold must be ≥ 0 Å, got -1.0"),
        (("--top", "0"), "error: --top must be at least 1, got 0"),
        (("--rank-k", "-1"), "error: --rank-k must be a finite number ≥ 0, got -1.0"),
        (("--workers", "-1"), "error: --workers must be ≥ 0, got -1"),
        (("--chunk-size", "0"), "error: --chunk-size must be at least 1, got 0"),
        (("--shard", "x"), "error: --shard 'x': expected I/N with a zero-based I, e.g. 0/4"),
    ]:
        r = CliRunner().invoke(screen, args(screen_store, onnx, out, *more))
        assert r.exit_code == 2 and r.stderr.strip() == line, r.stderr
    r = CliRunner().invoke(screen, args(screen_store, onnx, screen_store))
    assert r.stderr.strip() == (f"error: --output {screen_store} is the input store; choose "
                                "another file"), r.stderr
    other = tmp_path / "other.h5"
    other.write_bytes(reference_predictions.read_bytes())
    r = CliRunner().invoke(screen, args(screen_store, onnx, other, "--max-atoms", "30"))
    assert r.exit_code == 2, r.stderr
    assert r.stderr.strip().endswith("; pass --no-resume to replace it or choose another "
                                     "--output"), r.stderr
    assert not out.exists() and not PartsDir(out).path.exists()


def test_merge_only_exit_codes_and_info(tmp_path: Path, screen_store: Path,
                                        small_model: dict[str, Any]) -> None:
    from deepergat.cli import main

    out = tmp_path / "p.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=100, shard="0/3")
    r = CliRunner().invoke(screen, args(screen_store, small_model["onnx"], out, "--merge-only"))
    assert r.exit_code == 2
    assert "2 of 3 chunks are missing" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for shard in ("1/3", "2/3"):
        r = CliRunner().invoke(screen, args(screen_store, small_model["onnx"], out,
                                            "--chunk-size", "100", "--shard", shard))
        assert r.exit_code == 0, r.stderr
    assert "wrote" in r.stdout and out.exists()
    r = CliRunner().invoke(screen, args(screen_store, small_model["onnx"], out, "--merge-only"))
    assert r.exit_code == 0 and "already merged" in r.stdout
    r = CliRunner().invoke(main, ["info", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "deepergat predictions" in r.stdout and "0 ok:" in r.stdout
    assert "6 two atoms closer than --overlap-threshold: 1" in r.stdout
    assert "flagged          3" in r.stdout and "heat_ref [eV]" in r.stdout


def test_summary_counts(tmp_path: Path, screen_store: Path, small_model: dict[str, Any]) -> None:
    out = tmp_path / "p.h5"
    r = CliRunner().invoke(screen, args(screen_store, small_model["onnx"], out, "--top", "3"))
    assert r.exit_code == 0, r.stderr
    assert "screened 300 structures" in r.stdout and "structures/s" in r.stdout
    assert "1 zero atoms: 1" in r.stdout and "flagged in the output: 3" in r.stdout
    assert f"wrote {out.with_name('p.top.csv')}" in r.stdout


# ------------------------------------------------------------------------------ processes


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi_ranks_give_the_same_file(tmp_path: Path, screen_store: Path,
                                      small_model: dict[str, Any], reference_predictions: Path,
                                      ranks: int) -> None:
    out = tmp_path / "p.h5"
    r = run_cli(*args(screen_store, small_model["onnx"], out, "--chunk-size", "16"),
                ranks=ranks)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"on {ranks} ranks" in r.stdout
    assert_same_predictions(reference_predictions, out, small_model["std"])
    logs = sorted(p.name for p in PartsDir(out).logs.iterdir())
    assert logs == [f"rank-{k:04d}.log" for k in range(ranks)]
    assert r.stderr.count("error") == 0


@pytest.mark.mpi
def test_mpi_file_error_is_one_line(tmp_path: Path, small_model: dict[str, Any]) -> None:
    r = run_cli(*args(tmp_path / "absent.h5", small_model["onnx"], tmp_path / "o.h5"), ranks=2)
    assert r.returncode == 2
    assert r.stderr.count("error:") == 1 and "absent.h5" in r.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun(tmp_path: Path, screen_store: Path,
                                    small_model: dict[str, Any],
                                    reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    parts = PartsDir(out)
    proc = subprocess.Popen(
        screen_cmd(*args(screen_store, small_model["onnx"], out, "--chunk-size", "2")),
        env=screen_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while len(parts.committed()) < 5:
            assert proc.poll() is None, "the screen ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    committed = parts.committed()
    assert 5 <= len(committed) < 150
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=2)
    assert result.outcome == "merged" and result.skipped == 2 * len(committed)
    assert_same_predictions(reference_predictions, out, small_model["std"])


@pytest.mark.slow
def test_the_same_command_twice_at_once_never_mixes(tmp_path: Path, screen_store: Path,
                                                     small_model: dict[str, Any],
                                                     reference_predictions: Path) -> None:
    """Two real processes, equal settings, one output: the second is refused with one line
    while the first works; the first's file is the reference one."""
    out = tmp_path / "p.h5"
    parts = PartsDir(out)
    cmd = screen_cmd(*args(screen_store, small_model["onnx"], out, "--chunk-size", "2"))
    first = subprocess.Popen(cmd, env=screen_env(), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not parts.committed():
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # the first is paused while the second runs, so the second always meets it at work
        # (however slowly the second starts on a loaded machine); same node: alive by its pid
        first.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(cmd, env=screen_env(), cwd=REPO, capture_output=True,
                                    text=True, timeout=240)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=240) == 0
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
    assert second.returncode == 2
    lines = [x for x in second.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "another run is writing it" in lines[0], second.stderr
    assert_same_predictions(reference_predictions, out, small_model["std"])
    assert not out.with_name("p.h5.lock").exists()


_BLOCK_TORCH = '''
import importlib.abc, os, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torch_geometric"):
            with open(os.environ["DEEPERGAT_TORCH_MARKER"], "a") as fh:
                fh.write(f"{os.getpid()} {name}\\n")
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, _NoTorch())
# chain to the next sitecustomize on the path, if any
_here = os.path.dirname(os.path.abspath(__file__))
for _d in sys.path:
    _p = os.path.join(_d or ".", "sitecustomize.py")
    if os.path.abspath(_d or ".") != _here and os.path.isfile(_p):
        exec(compile(open(_p).read(), _p, "exec"), {"__name__": "sitecustomize_chained"})
        break
'''


@pytest.mark.slow
def test_onnx_screen_never_imports_torch(tmp_path: Path, screen_store: Path,
                                         small_model: dict[str, Any],
                                         reference_predictions: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_TORCH)
    marker = tmp_path / "torch-imports.txt"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = screen_env(PYTHONPATH=path, DEEPERGAT_TORCH_MARKER=str(marker))
    out = tmp_path / "p.h5"
    # --workers 1: the forkserver's worker processes must not import torch either.
    r = run_cli(*args(screen_store, small_model["onnx"], out, "--workers", "1"), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists(), marker.read_text()
    assert_same_predictions(reference_predictions, out, small_model["std"])


@pytest.mark.parametrize(("code", "status"), [(0, 0), (2, 2), (None, 0), ("a message", 1)])
def test_the_quick_exit_keeps_the_status_the_exit_handlers_and_the_output(
        tmp_path: Path, code: object, status: int) -> None:
    """`deepergat-screen` ends without the interpreter's module teardown, but the exit
    handlers run, buffered output arrives through a pipe, and the status is the command's."""
    mark = tmp_path / "handler-ran"
    program = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(pathlib.Path({str(mark)!r}).touch)\n"
        "from deepergat.cli.screen import _exit_now\n"
        "print('summary line', end='')\n"
        f"_exit_now(SystemExit({code!r}))\n"
        "raise AssertionError('not reached')\n"
    )
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == status, r.stderr
    assert r.stdout == "summary line" and mark.exists()
    assert ("a message" in r.stderr) == (code == "a message")


def test_a_python_caller_of_main_keeps_its_process(tmp_path: Path) -> None:
    """Only the console script's own process ends early: ``main(argv)`` called from Python (a
    notebook, a wrapper) raises click's SystemExit as before, and the caller goes on."""
    from deepergat.cli.screen import main

    with pytest.raises(SystemExit) as end:
        main(["--input", str(tmp_path / "missing.h5")])
    assert end.value.code == 2
