"""Nothing lost: a run killed at any moment and rerun with the same command finishes, bit-identical to an unbroken
run under --deterministic; SIGTERM checkpoints and exits 75; a NaN stops the run and keeps the last good checkpoint;
a lost Horovod rank ends the job quickly and the rerun resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, cli_env, read_metrics, requires_horovod, run_cli

# 200 steps an epoch, a checkpoint every 50 steps, 3 epochs: 600 steps.
RESUMABLE = ("train", "--data", "sample", "--batch-size", "20", "--seed", "11", "--epochs", "3", "--checkpoint-every",
             "50", "--steps-per-call", "5", "--deterministic", "--image-every", "0", "--keep-checkpoints", "20")
FINAL = "ckpt-000000600.npz"


def checkpoint_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[key] for key in sorted(archive.files) if key != "meta"]


def checkpoint_steps(logdir: Path) -> list[int]:
    folder = logdir / "checkpoints"
    return sorted(int(p.name[5:14]) for p in folder.glob("ckpt-*.npz")) if folder.is_dir() else []


def start(args, workdir, logdir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dist_ae", *args, "--logdir", str(logdir)], cwd=ROOT,
                            env=cli_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process: subprocess.Popen, logdir: Path, at_least: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = checkpoint_steps(logdir)
        if steps and steps[-1] >= at_least:
            return steps[-1]
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {at_least} within {timeout} s")


@pytest.fixture(scope="module")
def unbroken(workdir):
    logdir = workdir / "unbroken"
    result = run_cli(*RESUMABLE, "--logdir", str(logdir), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir


def test_sigkill_anywhere_then_rerun_ends_bit_identical(unbroken, workdir):
    logdir = workdir / "killed"
    for at_least in (100, 350):  # mid-epoch 1, then mid-epoch 2 of the rerun
        process = start(RESUMABLE, workdir, logdir)
        wait_for_checkpoint(process, logdir, at_least)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        assert checkpoint_steps(logdir)[-1] < 600
    # A process killed while writing leaves a temporary file behind: it must not be mistaken for a checkpoint.
    (logdir / "checkpoints" / "ckpt-000000999.npz.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    resumed_from = checkpoint_steps(logdir)[-1]
    result = run_cli(*RESUMABLE, "--logdir", str(logdir), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {logdir / 'checkpoints' / f'ckpt-{resumed_from:09d}.npz'}" in result.stdout
    assert not list((logdir / "checkpoints").glob("*.tmp"))
    for killed, straight in zip(checkpoint_arrays(logdir / "checkpoints" / FINAL),
                                checkpoint_arrays(unbroken / "checkpoints" / FINAL)):
        np.testing.assert_array_equal(killed, straight)
    assert [r["epoch"] for r in read_metrics(logdir)] == [1, 2, 3]
    assert read_metrics(logdir)[-1]["weights_fingerprint"] == read_metrics(unbroken)[-1]["weights_fingerprint"]


def test_sigterm_checkpoints_exits_75_and_the_rerun_resumes(unbroken, workdir):
    logdir = workdir / "terminated"
    process = start(RESUMABLE, workdir, logdir)
    wait_for_checkpoint(process, logdir, 250)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-3000:]
    assert "received SIGTERM: stopping after this step, with a checkpoint" in stdout
    assert "dist-ae: stopped by a signal after step" in stderr and "rerun the same command to resume" in stderr
    stopped_at = checkpoint_steps(logdir)[-1]
    assert f"checkpoint {logdir / 'checkpoints' / f'ckpt-{stopped_at:09d}.npz'}" in stdout  # where it stopped
    result = run_cli(*RESUMABLE, "--logdir", str(logdir), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ckpt-{stopped_at:09d}.npz" in result.stdout.split("resuming from", 1)[1].splitlines()[0]
    for resumed, straight in zip(checkpoint_arrays(logdir / "checkpoints" / FINAL),
                                 checkpoint_arrays(unbroken / "checkpoints" / FINAL)):
        np.testing.assert_array_equal(resumed, straight)


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import tensorflow as tf

    from dist_ae import run
    from dist_ae.config import TrainConfig
    from dist_ae.errors import TrainingError
    from dist_ae.trainer import Trainer

    original = Trainer.make_train_function

    def blows_up_on_the_fifth_call(self):
        train_steps, calls = original(self), []

        def wrapped(iterator, num_steps):
            calls.append(num_steps)
            loss = train_steps(iterator, num_steps)
            if len(calls) >= 5:  # the weights go bad, and so does the loss
                kernel = self.autoencoder.weights[0]
                kernel.assign(tf.fill(kernel.shape, float("nan")))
                return loss * float("nan")
            return loss

        return wrapped

    monkeypatch.setattr(Trainer, "make_train_function", blows_up_on_the_fifth_call)
    logdir = tmp_path / "nan"
    config = TrainConfig(data="sample", batch_size=20, epochs=2, steps_per_call=10, checkpoint_every=20,
                         strategy="default", logdir=str(logdir), image_every=0)
    with pytest.raises(TrainingError, match=r"the training loss became nan at step 50 \(epoch 1\); stopped without "
                                            r"checkpointing this state"):
        run.train(config, say=lambda message: None)
    assert checkpoint_steps(logdir) == [20, 40]
    for array in checkpoint_arrays(logdir / "checkpoints" / "ckpt-000000040.npz"):
        assert np.isfinite(array).all()


def test_overwrite_starts_over_in_a_folder_of_another_run(default_run, workdir):
    logdir = workdir / "overwritten"
    shutil.copytree(default_run[0], logdir)
    result = run_cli("train", "--data", "sample", "--epochs", "1", "--batch-size", "50", "--image-every", "0",
                     "--overwrite", "--logdir", str(logdir), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--overwrite: removed the earlier run's config.json, metrics.jsonl, checkpoints" in result.stdout
    assert "resuming" not in result.stdout
    assert [(r["epoch"], r["global_batch_size"]) for r in read_metrics(logdir)] == [(1, 50)]
    assert checkpoint_steps(logdir) == [80]


def horovod_job(workdir: Path, logdir: Path) -> tuple[list[str], subprocess.Popen]:
    """A two-rank horovodrun job of RESUMABLE, started; returns its command (to rerun it) and its process."""
    command = [shutil.which("horovodrun") or "horovodrun", "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
               "-m", "dist_ae", *RESUMABLE, "--strategy", "horovod", "--logdir", str(logdir)]
    job = subprocess.Popen(command, cwd=ROOT, env=cli_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    return command, job


def rank_pid(rank: int) -> int:
    """The training process of one Horovod rank: horovodrun starts it under `sh -c env HOROVOD_RANK=r ...`."""
    shells = subprocess.run(["pgrep", "-f", f"HOROVOD_RANK={rank} "], capture_output=True, text=True).stdout.split()
    children = subprocess.run(["pgrep", "-P", shells[0]], capture_output=True, text=True).stdout.split()
    return int(children[0])


@requires_horovod
def test_a_lost_horovod_rank_ends_the_job_and_the_rerun_finishes(workdir):
    logdir = workdir / "horovod-lost"
    command, job = horovod_job(workdir, logdir)
    wait_for_checkpoint(job, logdir, 100)
    os.kill(rank_pid(1), signal.SIGKILL)  # one rank, not the launcher
    killed = time.monotonic()
    stdout, stderr = job.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert job.returncode != 0
    output = stdout + stderr
    assert "dist-ae: training stopped: lost contact with another Horovod rank (horovodrun names it)" in output
    assert "one or more processes exited with non-zero status" in output and "Exit code: 137" in output
    result = subprocess.run(command, cwd=ROOT, env=cli_env(workdir), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert "resuming from" in result.stdout
    assert [r["epoch"] for r in read_metrics(logdir)] == [1, 2, 3]
    assert read_metrics(logdir)[-1]["replicas_checked"] == 2


@requires_horovod
def test_sigterm_to_one_rank_stops_both_after_the_same_step(workdir):
    logdir = workdir / "horovod-terminated"
    command, job = horovod_job(workdir, logdir)
    wait_for_checkpoint(job, logdir, 100)
    os.kill(rank_pid(1), signal.SIGTERM)  # rank 1 only: rank 0 learns of it through the per-call allreduce
    stdout, stderr = job.communicate(timeout=120)
    stops = sorted(line for line in stderr.splitlines() if "dist-ae: stopped by a signal after" in line)
    assert len(stops) == 2, stderr[-3000:]
    assert stops[0].startswith("[0]<stderr>:") and stops[1].startswith("[1]<stderr>:")
    assert stops[0].split(":", 1)[1] == stops[1].split(":", 1)[1]  # the same step on both ranks
    stopped_at = checkpoint_steps(logdir)[-1]
    result = subprocess.run(command, cwd=ROOT, env=cli_env(workdir), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert f"ckpt-{stopped_at:09d}.npz" in result.stdout
    assert read_metrics(logdir)[-1]["replicas_checked"] == 2
