"""Without Horovod the rest of dist-ae works, and `--strategy horovod` says how to install it."""

from pathlib import Path

import pytest

from conftest import assert_usage_error, cli_env, read_metrics, run_cli


@pytest.fixture()
def no_horovod_env(tmp_path):
    """An environment in which `import horovod` fails, as on a machine where it was never installed."""
    shadow = tmp_path / "shadow"
    (shadow / "horovod").mkdir(parents=True)
    (shadow / "horovod" / "__init__.py").write_text("raise ImportError('No module named horovod')\n")
    return cli_env(tmp_path, PYTHONPATH=f"{shadow}:{Path(__file__).resolve().parent.parent}")


def test_horovod_strategy_says_how_to_install(no_horovod_env, tmp_path):
    result = run_cli("train", "--strategy", "horovod", "--data", "sample", "--logdir", str(tmp_path / "run"),
                     env=no_horovod_env)
    assert_usage_error(result, "--strategy horovod: Horovod is not installed", "bash launch/install_horovod.sh")
    assert not (tmp_path / "run").exists()


def test_everything_else_runs_without_horovod(no_horovod_env, tmp_path):
    logdir = tmp_path / "run"
    result = run_cli("train", "--data", "sample", "--epochs", "1", "--strategy", "mirrored", "--cpu-devices", "2",
                     "--image-every", "0", "--logdir", str(logdir), env=no_horovod_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_metrics(logdir)[0]["num_replicas"] == 2
    result = run_cli("evaluate", "--model", str(logdir / "export"), "--data", "sample", env=no_horovod_env)
    assert result.returncode == 0 and "val_loss (bce)" in result.stdout
