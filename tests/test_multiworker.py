"""MultiWorkerMirroredStrategy through our own loop: two workers on loopback started by `dist-ae launch` match one
device, end identical, leave files from the chief only, and a killed worker ends the job quickly, by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TRAIN, assert_usage_error, cli_env, read_metrics, relative_difference, run_cli


@pytest.fixture(scope="module")
def two_workers(workdir):
    cwd = workdir / "multiworker-cwd"
    cwd.mkdir()
    logdir = workdir / "multiworker"
    result = run_cli("launch", "--workers", "2", "--", *TRAIN[1:], "--epochs", "2", "--logdir", str(logdir),
                     cwd=cwd, env=cli_env(workdir, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return logdir, result, cwd


def test_two_workers_match_one_device(two_workers, default_run):
    logdir, result, _ = two_workers
    records, default = read_metrics(logdir), read_metrics(default_run[0])[:2]
    assert [r["strategy"] for r in records] == ["multiworker"] * 2
    assert [(r["num_replicas"], r["num_workers"]) for r in records] == [(2, 2), (2, 2)]
    assert relative_difference([r["loss"] for r in records], [r["loss"] for r in default]) < 1e-4
    assert relative_difference([r["val_loss"] for r in records], [r["val_loss"] for r in default]) < 1e-4
    assert records[-1]["replicas_checked"] == 2  # both workers' weights compared and identical
    assert "[worker 0] Epoch 2/2" in result.stdout
    assert "[worker 1] Epoch" not in result.stdout  # only the chief reports


def test_only_the_chief_writes(two_workers):
    logdir, _, cwd = two_workers
    assert sorted(p.name for p in logdir.iterdir()) == [
        "checkpoints", "config.json", "export", "metrics.jsonl", "train", "validation"
    ]
    assert len(list((logdir / "train").iterdir())) == 1 and len(list((logdir / "validation").iterdir())) == 1
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["ckpt-000000200.npz", "ckpt-000000400.npz"]
    assert list(cwd.iterdir()) == []  # the other worker left nothing behind to clean up


def test_a_killed_worker_ends_the_job_by_name_and_the_rerun_finishes(workdir):
    logdir = workdir / "multiworker-killed"
    command = [sys.executable, "-m", "dist_ae", "launch", "--workers", "2", "--", *TRAIN[1:], "--epochs", "3",
               "--checkpoint-every", "50", "--image-every", "0", "--logdir", str(logdir)]
    launcher = subprocess.Popen(command, cwd=ROOT, env=cli_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    pids = {}
    for line in launcher.stdout:
        if line.startswith("dist-ae launch: worker"):
            pids[int(line.split()[3])] = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
        if "[worker 0] checkpoint" in line and "step 100)" in line:  # mid-epoch, with checkpoints behind it
            break
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    stdout, stderr = launcher.communicate(timeout=120)
    elapsed = time.monotonic() - killed
    assert launcher.returncode != 0
    assert elapsed < 60, elapsed
    assert "dist-ae launch: worker 1 was killed by SIGKILL; stopping the other workers" in stderr
    assert "[worker 0] dist-ae: training stopped: lost contact with worker 1" in stderr
    assert (logdir / "checkpoints" / "ckpt-000000100.npz").exists()  # the chief's checkpoints are kept
    rerun = subprocess.run(command, cwd=ROOT, env=cli_env(workdir), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout[-3000:], rerun.stderr[-3000:])
    assert "[worker 0] resuming from" in rerun.stdout
    records = read_metrics(logdir)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["replicas_checked"] == 2


def test_auto_picks_multiworker_from_tf_config():
    from dist_ae.backends.base import resolve_strategy

    two = '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}'
    one = '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}'
    assert resolve_strategy("auto", 0, {"TF_CONFIG": two}) == "multiworker"
    assert resolve_strategy("auto", 0, {"TF_CONFIG": one}) == "default"


def test_multiworker_without_a_cluster_says_how(tmp_path):
    env = cli_env(tmp_path)
    env.pop("TF_CONFIG", None)
    env.pop("SLURM_JOB_ID", None)
    result = run_cli("train", "--strategy", "multiworker", "--data", "sample", "--logdir", str(tmp_path / "x"), env=env)
    assert_usage_error(result, "needs TF_CONFIG (or a Slurm job)", "dist-ae launch --workers N")
    result = run_cli("train", "--strategy", "multiworker", "--data", "sample", "--logdir", str(tmp_path / "x"),
                     env=cli_env(tmp_path, TF_CONFIG="{not json"))
    assert_usage_error(result, "TF_CONFIG: not a valid cluster description")
    assert not (tmp_path / "x").exists()


def test_launch_refuses_another_strategy(tmp_path):
    result = run_cli("launch", "--workers", "2", "--", "--strategy", "horovod", env=cli_env(tmp_path))
    assert_usage_error(result, "--strategy horovod: `dist-ae launch` starts multiworker workers")
    assert_usage_error(run_cli("launch", "--workers", "0", "--", "--data", "sample"), "--workers 0: must be at least 1")
