"""Shared helpers: run the `dist-ae` command as a user would, in a fresh process, and read back what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Horovod tests run wherever Horovod is installed, and always in CI (where .ci/run installs it): there a missing
# horovodrun fails them instead of skipping them.
requires_horovod = pytest.mark.skipif(
    shutil.which("horovodrun") is None and not os.environ.get("CI"),
    reason="Horovod is not installed (bash launch/install_horovod.sh)",
)


def cli_env(tmp: Path | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tmp is not None:
        env["KERAS_HOME"] = str(tmp / "keras-home")  # never the user's cache: "auto" then falls back to the sample
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python -m dist_ae ARGS` and returns the finished process (stdout and stderr as text)."""
    return subprocess.run(
        [sys.executable, "-m", "dist_ae", *args],
        cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout,
    )


def read_metrics(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def folder_snapshot(folder: Path) -> dict:
    """Every file below `folder` with its size and modification time: equal snapshots mean nothing was touched."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user mistake: exit status 2, one line on stderr naming the problem, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not is_tensorflow_chatter(line)]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("dist-ae: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def is_tensorflow_chatter(line: str) -> bool:
    """TensorFlow's C++ start-up lines (absl logging before it is initialised), which are not ours."""
    return line.startswith(("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ")) or line.startswith(
        "To enable the following instructions"
    )


@pytest.fixture(scope="session")
def sample_arrays():
    from dist_ae import data

    return data.load("sample", say=lambda message: None)


# 200 steps an epoch on the 4,000 sample digits: enough for three epochs to leave the mean-digit plateau.
TRAIN = ("train", "--data", "sample", "--batch-size", "20", "--seed", "5")


def relative_difference(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def default_run(workdir):
    """The reference: `--strategy default`, three epochs of the sample at global batch 20, seed 5."""
    logdir = workdir / "default"
    result = run_cli(*TRAIN, "--epochs", "3", "--strategy", "default", "--logdir", str(logdir), env=cli_env(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir, result
