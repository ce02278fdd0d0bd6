"""How a screen fails: user text kept as it is in messages that name settings, a refusal that
travels between ranks, one line for a full disk naming the output setting."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest

from deepergat.errors import DeepergatError, SettingError
from deepergat.screening.failures import AllRanksError, Refusal, literal, work_failure


def test_literal_text_reads_as_itself() -> None:
    e = SettingError(f"{literal('/runs/{run}/x.h5')} is the input; choose another {{output}}")
    assert str(e) == "/runs/{run}/x.h5 is the input; choose another output"
    assert e.render({"output": "--output"}) == (
        "/runs/{run}/x.h5 is the input; choose another --output")
    assert str(SettingError(literal("no braces {'a': 1} {A} {{x}}"))) == (
        "no braces {'a': 1} {A} {{x}}")
    # a user's text that spells a flag's setting stays text on the command line too
    e = SettingError(f"--shard {literal('a{model}')}: bad {{shard}}")
    assert e.render({"model": "--model", "shard": "--shard"}) == "--shard a{model}: bad --shard"


@pytest.mark.parametrize("error", [
    SettingError("{max_atoms} must be at least 1, got 0"),
    DeepergatError("/data/{x}.h5: no such file"),
])
def test_a_refusal_travels_and_keeps_its_settings(error: DeepergatError) -> None:
    refusal = pickle.loads(pickle.dumps(Refusal.of(error, prefix="rank 3: ")))
    raised = refusal.error()
    assert isinstance(raised, AllRanksError)
    assert str(raised) == "rank 3: " + str(error)
    assert isinstance(raised.error, SettingError) == isinstance(error, SettingError)
    if isinstance(raised.error, SettingError):
        assert raised.error.render({"max_atoms": "--max-atoms"}) == (
            "rank 3: --max-atoms must be at least 1, got 0")


def test_a_full_disk_is_one_line_naming_the_output_setting(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o.h5"))
    err = work_failure(full, 0, tmp_path / "o.h5", lambda: 5e6, "the committed parts are kept")
    assert isinstance(err, SettingError)
    text = err.render({"output": "--output"})
    assert text.startswith(f"cannot write {tmp_path / 'o.h5'}: no space left on the device (")
    assert "needs ~5 MB" in text
    assert text.endswith("; free space or choose another --output (the committed parts are "
                         "kept), then run the same command again")
    readonly = OSError(errno.EROFS, "Read-only file system")
    err = work_failure(readonly, 0, tmp_path, lambda: 0.0, "kept")
    assert isinstance(err, SettingError) and "choose another output (kept)" in str(err)


def test_user_errors_pass_and_bugs_keep_their_type() -> None:
    mine = DeepergatError("a damaged block")
    assert work_failure(mine, 0, Path("."), lambda: 0.0, "") is mine
    bug = ZeroDivisionError("a bug")
    assert work_failure(bug, 0, Path("."), lambda: 0.0, "") is bug
    stop = KeyboardInterrupt()
    assert work_failure(stop, 0, Path("."), lambda: 0.0, "") is stop
