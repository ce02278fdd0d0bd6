"""The README is true as written: its Python blocks run (in a folder holding the
``candidates.h5`` its first command makes), and its first command's screen works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the README's ``candidates.h5`` (fewer of them)."""
    folder = tmp_path_factory.mktemp("readme")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_candidates.py"), "-n", "300",
                    "-o", str(folder / "candidates.h5")], check=True, capture_output=True)
    return folder


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("k", range(len(BLOCKS)))
def test_each_python_block_runs_as_written(k: int, scratch: Path) -> None:
    r = subprocess.run([sys.executable, "-c", BLOCKS[k]], cwd=scratch, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"README block {k}:\n{BLOCKS[k]}\n{r.stderr[-3000:]}"
