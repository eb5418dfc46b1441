"""A mistake a user can make is one line naming it, exit status 2, no traceback, and the log folder as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_usage_error, cli_env, folder_snapshot, run_cli
from dist_ae.config import TrainConfig


@pytest.fixture()
def existing_run(tmp_path):
    """A log folder holding an earlier run's files (as a user's would)."""
    logdir = tmp_path / "run"
    (logdir / "checkpoints").mkdir(parents=True)
    (logdir / "config.json").write_text(TrainConfig(data="sample", logdir=str(logdir)).to_json())
    (logdir / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.3, "val_loss": 0.3}\n')
    return logdir


FAST_CASES = [  # rejected before TensorFlow is imported
    (["--epochs", "0"], "--epochs 0: must be from 1 to 1,000,000"),
    (["--epochs", "99999999999999999999"], "--epochs 99999999999999999999: must be from 1 to 1,000,000"),
    (["--seed", "-1"], "--seed -1: must be from 0 to 2**32 - 1"),
    (["--synthetic-samples", "99999999999"], "--synthetic-samples 99999999999: must be from 20 to 10,000,000 digits"),
    (["--batch-size", "0"], "--batch-size 0: must be a positive number of digits"),
    (["--batch-size", "-5"], "--batch-size -5: must be a positive number of digits"),
    (["--learning-rate", "-0.1"], "--learning-rate -0.1: must be a positive, finite number"),
    (["--learning-rate", "nan"], "--learning-rate nan: must be a positive, finite number"),
    (["--strategy", "bogus"], "argument --strategy: invalid choice: 'bogus'"),
    (["--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
    (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
    (["--steps-per-call", "0"], "--steps-per-call 0: must be at least 1"),
    (["--cpu-devices", "-1"], "--cpu-devices -1: must be 0 (off) or a count up to 64"),
    (["--cpu-devices", "100000"], "--cpu-devices 100000: must be 0 (off) or a count up to 64"),
    (["--data", "sample", "--seed", "1"], "holds a run with other settings (seed: 0 -> 1)"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1: must be 0 (epochs only) or a number of steps"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints 0: must keep at least 1"),
    (["--precision", "float8"], "argument --precision: invalid choice: 'float8'"),
    (["--warmup-epochs", "2"], "--warmup-epochs 2.0: ramps up to the scaled learning rate; add --scale-lr"),
]


@pytest.mark.parametrize("arguments,expected", FAST_CASES, ids=[" ".join(a) for a, _ in FAST_CASES])
def test_bad_flag(existing_run, tmp_path, arguments, expected):
    before = folder_snapshot(existing_run)
    result = run_cli("train", "--data", "sample", "--logdir", str(existing_run), *arguments, env=cli_env(tmp_path))
    assert_usage_error(result, expected)
    assert folder_snapshot(existing_run) == before


def test_batch_that_does_not_split_over_replicas(tmp_path):
    logdir = tmp_path / "fresh"
    result = run_cli("train", "--data", "sample", "--strategy", "mirrored", "--cpu-devices", "2", "--batch-size", "25",
                     "--logdir", str(logdir), env=cli_env(tmp_path))
    assert_usage_error(result, "--batch-size 25: does not divide evenly over 2 replicas; use a multiple of 2, such as 24 or 26")
    assert not logdir.exists()


def test_batch_larger_than_the_data(tmp_path):
    result = run_cli("train", "--data", "sample", "--batch-size", "5000", "--logdir", str(tmp_path / "x"),
                     env=cli_env(tmp_path))
    assert_usage_error(result, "--batch-size 5000: larger than the 4000 training digits")


def test_bad_data_file_leaves_the_log_folder_alone(existing_run, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((10, 28, 28), np.uint8), y_train=np.full(10, 12), x_test=np.zeros((5, 28, 28), np.uint8),
             y_test=np.zeros(5, np.uint8))
    (existing_run / "config.json").write_text(json.dumps({"data": str(bad), "batch_size": 100, "learning_rate": 0.001,
                                                          "loss": "bce", "seed": 0, "synthetic_samples": 12000}))
    before = folder_snapshot(existing_run)
    result = run_cli("train", "--data", str(bad), "--logdir", str(existing_run), env=cli_env(tmp_path))
    assert_usage_error(result, f"{bad}: training split labels span 12..12; expected 0..9")
    assert folder_snapshot(existing_run) == before


def test_missing_data_file(tmp_path):
    result = run_cli("train", "--data", str(tmp_path / "mnist.npz"), "--logdir", str(tmp_path / "x"), env=cli_env(tmp_path))
    assert_usage_error(result, "no such file or folder, and not one of auto, mnist, sample, synthetic")
    assert not (tmp_path / "x").exists()


def test_offline_mnist(tmp_path):
    result = run_cli("train", "--data", "mnist", "--logdir", str(tmp_path / "x"), env=cli_env(tmp_path))
    assert_usage_error(result, "full MNIST is not in Keras' cache and could not be downloaded", "--data sample")
    assert not (tmp_path / "x").exists()


def test_log_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("train", "--data", "sample", "--logdir", str(blocker / "run"), env=cli_env(tmp_path))
    assert_usage_error(result, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_corrupt_checkpoint_is_named_and_kept(tmp_path):
    logdir = tmp_path / "run"
    (logdir / "checkpoints").mkdir(parents=True)
    corrupt = logdir / "checkpoints" / "ckpt-000000080.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    before = folder_snapshot(logdir)
    result = run_cli("train", "--data", "sample", "--logdir", str(logdir), env=cli_env(tmp_path))
    assert_usage_error(result, f"{corrupt}: corrupt checkpoint")
    assert folder_snapshot(logdir) == before


def test_evaluate_without_a_model(tmp_path):
    result = run_cli("evaluate", "--model", str(tmp_path), "--data", "sample", env=cli_env(tmp_path))
    assert_usage_error(result, "no autoencoder.keras there")


def test_help_and_no_command():
    assert run_cli("--help").returncode == 0
    assert_usage_error(run_cli(), "the following arguments are required: command")


def test_log_folder_on_a_read_only_file_system(tmp_path):
    result = run_cli("train", "--data", "sample", "--logdir", "/proc/dist-ae-run", env=cli_env(tmp_path))
    assert_usage_error(result, "--logdir /proc/dist-ae-run: /proc is not writable")


from test_data import MALFORMED_IDS, malformed  # noqa: E402,F401  (the malformed files, written once)


@pytest.mark.parametrize("case_id", MALFORMED_IDS)
def test_bad_data_through_the_command(malformed, case_id, tmp_path):
    """Every malformed input of the catalogue, as a user meets it: one line, status 2, the log folder untouched."""
    path, expected = malformed[case_id]
    logdir = tmp_path / "logs"
    logdir.mkdir()
    (logdir / "notes.txt").write_text("the user's own file")
    before = folder_snapshot(logdir)
    result = run_cli("train", "--data", str(path), "--logdir", str(logdir), env=cli_env(tmp_path))
    assert_usage_error(result, expected)
    assert folder_snapshot(logdir) == before


def test_a_single_array_is_not_an_npz(tmp_path):
    single = tmp_path / "digits.npy"
    np.save(single, np.zeros((10, 28, 28), np.uint8))
    result = run_cli("train", "--data", str(single), "--logdir", str(tmp_path / "x"), env=cli_env(tmp_path))
    assert_usage_error(result, f"{single}: a single array, not a .npz archive of x_train, y_train, x_test, y_test")


def test_tf_config_naming_a_task_that_is_not_there(tmp_path):
    config = '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 5}}'
    result = run_cli("train", "--strategy", "multiworker", "--data", "sample", "--logdir", str(tmp_path / "x"),
                     env=cli_env(tmp_path, TF_CONFIG=config))
    assert_usage_error(result, "TF_CONFIG: not a valid cluster description (task index 5 is not one of the 1 worker tasks)")
