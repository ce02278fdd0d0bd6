"""Chunk plans, shards balanced by atom count, shards from the SLURM array environment."""

from __future__ import annotations

import numpy as np
import pytest

from deepergat.errors import DeepergatError, SettingError
from deepergat.screening.plan import make_plan, parse_shard, shard_chunks
from deepergat.system.launch import claim_token, shard_from_env


def test_plan_cuts_runs_of_chunk_size() -> None:
    n_atoms = np.arange(1, 11)
    plan = make_plan(n_atoms, 4)
    assert plan.n_chunks == 3
    assert [plan.bounds(k) for k in range(3)] == [(0, 4), (4, 8), (8, 10)]
    np.testing.assert_array_equal(plan.atoms, [1 + 2 + 3 + 4, 5 + 6 + 7 + 8, 9 + 10])
    assert make_plan(np.zeros(0, np.int64), 4).n_chunks == 0
    with pytest.raises(SettingError, match=r"^chunk_size must be at least 1"):
        make_plan(n_atoms, 0)
    with pytest.raises(IndexError):
        plan.bounds(3)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_chunks_and_balance_atoms(count: int) -> None:
    rng = np.random.default_rng(count)
    atoms = rng.integers(100, 5000, 50)
    shards = [shard_chunks(atoms, i, count) for i in range(count)]
    together = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(together, np.arange(50))  # each chunk exactly once
    loads = [atoms[s].sum() for s in shards]
    assert max(loads) - min(loads) <= atoms.max()  # greedy LPT bound
    np.testing.assert_array_equal(shard_chunks(atoms, 0, count), shards[0])  # deterministic


def test_equal_chunks_are_interleaved() -> None:
    atoms = np.full(10, 100)
    assert shard_chunks(atoms, 1, 3).tolist() == [1, 4, 7]


def test_parse_shard() -> None:
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(SettingError, match=r"^shard ") as e:
            parse_shard(bad)
        assert e.value.render({"shard": "--shard"}).startswith("--shard ")
    # a user's text in the message stays as it is (it names no setting)
    with pytest.raises(SettingError) as e:
        parse_shard("{shard}")
    assert str(e.value).startswith("shard '{shard}': expected I/N")


def test_shard_from_slurm_array_environment() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_env(env) == (2, 4)
    assert shard_from_env({}) is None
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (0, 2)


def test_uneven_array_list_suggests_shard() -> None:
    # --array=1,5,7: min 1, step 1 (SLURM reports 1 for a list), count 3 -> task 7 gives I = 6.
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_STEP": "1", "SLURM_ARRAY_TASK_COUNT": "3"}
    with pytest.raises(DeepergatError, match="--shard"):
        shard_from_env(env)


def test_claim_token() -> None:
    assert claim_token({"SLURM_ARRAY_JOB_ID": "12", "SLURM_JOB_ID": "15"}) == "12"
    assert claim_token({"SLURM_JOB_ID": "15"}) == "15"
    assert claim_token({}) == "local"
