"""Horovod for real: ranks started by horovodrun on loopback with Gloo, through the same training loop. Two ranks match
one device at the same global batch, end with identical weights, write one set of files, and resume together."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TRAIN, cli_env, read_metrics, relative_difference, requires_horovod

HOROVODRUN = shutil.which("horovodrun")
pytestmark = requires_horovod


def horovodrun(ranks: int, *command: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    assert HOROVODRUN, "horovodrun is not on PATH: launch/install_horovod.sh did not install Horovod"
    return subprocess.run(
        [HOROVODRUN, "-np", str(ranks), "-H", f"localhost:{ranks}", "--gloo", *command],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


def dist_ae() -> list[str]:
    script = shutil.which("dist-ae")
    return [script] if script else [sys.executable, "-m", "dist_ae"]


@pytest.fixture(scope="module")
def two_ranks(workdir):
    logdir = workdir / "horovod-2"
    result = horovodrun(2, *dist_ae(), *TRAIN, "--strategy", "horovod", "--epochs", "2", "--logdir", str(logdir),
                        env=cli_env(workdir))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return logdir, result


def test_two_ranks_write_one_set_of_files(two_ranks):
    logdir, result = two_ranks
    assert len(list((logdir / "train").iterdir())) == 1
    assert len(list((logdir / "validation").iterdir())) == 1
    assert [r["epoch"] for r in read_metrics(logdir)] == [1, 2]
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["ckpt-000000200.npz", "ckpt-000000400.npz"]
    assert sorted(p.name for p in (logdir / "export").iterdir()) == [
        "autoencoder.keras", "decoder.keras", "dist_ae.json", "encoder.keras"
    ]
    assert sorted(p.name for p in logdir.iterdir()) == [
        "checkpoints", "config.json", "export", "metrics.jsonl", "train", "validation"
    ]
    rank_one = [line for line in result.stdout.splitlines() if line.startswith("[1]<stdout>")]
    assert not any("Epoch" in line or "data:" in line for line in rank_one)  # only rank 0 reports
    assert "[0]<stdout>:Epoch 2/2" in result.stdout


def test_two_ranks_match_one_device(two_ranks, default_run):
    logdir, _ = two_ranks
    horovod, default = read_metrics(logdir), read_metrics(default_run[0])[:2]
    assert [r["num_replicas"] for r in horovod] == [2, 2] and horovod[0]["per_replica_batch_size"] == 10
    assert relative_difference([r["loss"] for r in horovod], [r["loss"] for r in default]) < 1e-4
    assert relative_difference([r["val_loss"] for r in horovod], [r["val_loss"] for r in default]) < 1e-4


def test_both_ranks_end_identical(two_ranks):
    last = read_metrics(two_ranks[0])[-1]
    assert last["replicas_checked"] == 2 and len(last["weights_fingerprint"]) == 64


def test_a_desynchronised_rank_is_caught(workdir):
    result = horovodrun(2, sys.executable, "tests/desync_replica.py", "horovod", env=cli_env(workdir))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    for rank in (0, 1):
        assert (f"[{rank}]<stdout>:caught: replicas disagree on the training state after epoch 1: "
                "replica 1 (worker 1) differs from replica 0 (worker 0)") in result.stdout


def test_one_rank_matches_one_device(workdir, default_run):
    logdir = workdir / "horovod-1"
    result = horovodrun(1, *dist_ae(), *TRAIN, "--strategy", "horovod", "--epochs", "2", "--logdir", str(logdir),
                        "--image-every", "0", env=cli_env(workdir))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    one, default = read_metrics(logdir), read_metrics(default_run[0])[:2]
    assert relative_difference([r["loss"] for r in one], [r["loss"] for r in default]) < 1e-4
    assert relative_difference([r["val_loss"] for r in one], [r["val_loss"] for r in default]) < 1e-4


def test_two_ranks_resume_together(two_ranks, workdir, default_run):
    resumed = workdir / "horovod-resumed"
    shutil.copytree(two_ranks[0], resumed)
    result = horovodrun(2, *dist_ae(), *TRAIN, "--strategy", "horovod", "--epochs", "3", "--logdir", str(resumed),
                        "--image-every", "0", env=cli_env(workdir))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert f"resuming from {resumed / 'checkpoints' / 'ckpt-000000400.npz'} (epoch 2 of 3 done)" in result.stdout
    records = read_metrics(resumed)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # Both ranks went on from epoch 2 with rank 0's state: they agree, and match the uninterrupted single device.
    assert records[-1]["replicas_checked"] == 2
    assert relative_difference([records[2]["loss"], records[2]["val_loss"]],
                               [read_metrics(default_run[0])[2]["loss"], read_metrics(default_run[0])[2]["val_loss"]]) < 1e-4


def test_auto_picks_horovod_under_horovodrun():
    from dist_ae.backends.base import resolve_strategy

    assert resolve_strategy("auto", 0, {"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}) == "horovod"
    assert resolve_strategy("auto", 0, {}) == "default"
    assert resolve_strategy("auto", 4, {}) == "mirrored"
    assert resolve_strategy("default", 0, {"HOROVOD_RANK": "0"}) == "default"
