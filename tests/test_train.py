"""`dist-ae train` end to end, as a user runs it: the loss falls on real digits, the log folder holds what the README
promises (read back with the tools users use), mirrored replicas match one device, and a run resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TRAIN, cli_env, read_metrics, relative_difference, run_cli

METRIC_FIELDS = {"epoch", "loss", "val_loss", "samples_per_sec", "epoch_seconds", "num_replicas", "global_batch_size"}


def test_validation_loss_falls_and_metrics_are_logged(default_run):
    logdir, result = default_run
    records = read_metrics(logdir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert METRIC_FIELDS <= set(record)
        assert record["num_replicas"] == 1 and record["global_batch_size"] == 20
        assert record["samples_per_sec"] > 0 and record["epoch_seconds"] > 0
    val = [r["val_loss"] for r in records]
    assert val[2] < 0.95 * val[0], val
    assert records[2]["loss"] < records[0]["loss"]
    assert "data: the 5,000-digit MNIST sample" in result.stdout
    assert "Epoch 3/3" in result.stdout and "val_loss" in result.stdout
    config = json.loads((logdir / "config.json").read_text())
    assert config["batch_size"] == 20 and config["epochs"] == 3 and config["seed"] == 5 and config["loss"] == "bce"


def test_tensorboard_holds_scalars_and_pictures(default_run):
    logdir, _ = default_run
    records = read_metrics(logdir)
    train = EventAccumulator(str(logdir / "train"), size_guidance={"tensors": 0})
    train.Reload()
    validation = EventAccumulator(str(logdir / "validation"), size_guidance={"tensors": 0})
    validation.Reload()

    def scalars(accumulator, tag):
        return [(event.step, float(tf.make_ndarray(event.tensor_proto))) for event in accumulator.Tensors(tag)]

    np.testing.assert_allclose([v for _, v in scalars(train, "epoch_loss")], [r["loss"] for r in records], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars(validation, "epoch_loss")], [r["val_loss"] for r in records], rtol=1e-6)
    assert [s for s, _ in scalars(validation, "epoch_loss")] == [1, 2, 3]
    batch = scalars(train, "batch_loss")
    assert len(batch) == 3 * 200 // 10 and batch[-1][0] == 600  # every call of 10 steps, at the global step
    assert scalars(train, "learning_rate")[0][1] == pytest.approx(1e-3)
    assert all(v > 0 for _, v in scalars(train, "samples_per_sec"))
    for tag in ("reconstructions", "latent_space", "manifold"):
        events = validation.Tensors(tag)
        assert [event.step for event in events] == [1, 2, 3], tag
        width, height, png = tf.make_ndarray(events[-1].tensor_proto)[:3]
        picture = tf.io.decode_png(png).numpy()
        assert picture.shape[0] == int(height) and picture.shape[1] == int(width) and picture.shape[0] > 100
        assert picture[..., :3].std() > 10, tag  # a drawing, not a blank image


def test_export_loads_and_matches_the_final_checkpoint(default_run, workdir):
    logdir, _ = default_run
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == [f"ckpt-000000{i}00.npz" for i in (2, 4, 6)]
    encoder = keras.models.load_model(logdir / "export" / "encoder.keras")
    decoder = keras.models.load_model(logdir / "export" / "decoder.keras")
    autoencoder = keras.models.load_model(logdir / "export" / "autoencoder.keras")
    from dist_ae import checkpoint
    from dist_ae.model import build_models

    _, _, fresh = build_models()
    optimizer = keras.optimizers.RMSprop(name="rmsprop")
    optimizer.build(fresh.trainable_variables)
    meta, arrays = checkpoint.read(logdir / "checkpoints" / "ckpt-000000600.npz")
    assert checkpoint.restore_values(logdir, fresh.weights + optimizer.variables, meta, arrays) == (3, 0, 0.0)
    digits = np.random.default_rng(0).random((8, 784), dtype=np.float32)
    np.testing.assert_allclose(autoencoder(digits), fresh(digits), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(decoder(encoder(digits)), fresh(digits), rtol=1e-6, atol=1e-7)
    assert tuple(encoder.output_shape) == (None, 2)

    result = run_cli("evaluate", "--model", str(logdir / "export"), "--data", "sample", env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-2000:]
    printed = float(result.stdout.split("val_loss (bce) = ")[1].split()[0])
    assert printed == pytest.approx(read_metrics(logdir)[-1]["val_loss"], rel=1e-5)


def test_mirrored_on_two_cpu_devices_matches_one_device(default_run, workdir):
    logdir, _ = default_run
    mirrored = workdir / "mirrored"
    result = run_cli(*TRAIN, "--epochs", "3", "--strategy", "mirrored", "--cpu-devices", "2", "--logdir", str(mirrored),
                     env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_metrics(logdir), read_metrics(mirrored)
    assert [r["num_replicas"] for r in two] == [2, 2, 2]
    assert two[-1]["replicas_checked"] == 2  # both replicas compared, and equal
    assert relative_difference([r["loss"] for r in two], [r["loss"] for r in one]) < 1e-4
    assert relative_difference([r["val_loss"] for r in two], [r["val_loss"] for r in one]) < 1e-4


def test_resume_continues_from_the_checkpoint(default_run, workdir):
    logdir, _ = default_run
    resumed = workdir / "resumed"
    shutil.copytree(logdir, resumed)
    before = read_metrics(resumed)
    result = run_cli(*TRAIN, "--epochs", "4", "--strategy", "default", "--logdir", str(resumed), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {resumed / 'checkpoints' / 'ckpt-000000600.npz'} (epoch 3 of 4 done)" in result.stdout
    assert "Epoch 1/4" not in result.stdout and "Epoch 4/4" in result.stdout
    after = read_metrics(resumed)
    assert [r["epoch"] for r in after] == [1, 2, 3, 4]
    assert after[:3] == before
    # The same four epochs without a break end at the same loss: the checkpoint held the whole state.
    straight = workdir / "straight"
    result = run_cli(*TRAIN, "--epochs", "4", "--strategy", "default", "--logdir", str(straight), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert relative_difference([after[3]["loss"], after[3]["val_loss"]],
                               [read_metrics(straight)[3]["loss"], read_metrics(straight)[3]["val_loss"]]) < 1e-6
    # A finished run asked for the same epochs again has nothing to do.
    again = run_cli(*TRAIN, "--epochs", "4", "--strategy", "default", "--logdir", str(resumed), env=cli_env(workdir))
    assert again.returncode == 0 and "nothing to train" in again.stdout
    assert len(read_metrics(resumed)) == 4


def test_a_drifting_mirrored_replica_is_caught(workdir):
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "tests/desync_replica.py", "mirrored"], cwd=ROOT, env=cli_env(workdir),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "caught: replicas disagree on the training state after epoch 1: replica 1 (worker 0) differs from replica 0" in result.stdout


def test_replicas_are_checked_at_the_end(default_run, workdir):
    records = read_metrics(default_run[0])
    assert records[-1]["replicas_checked"] == 1 and len(records[-1]["weights_fingerprint"]) == 64
    assert records[0]["weights_fingerprint"] is None  # --check-every 0: at the end only
