"""The whole training state (model weights, optimizer slots and step count, loss scale, and where in which epoch
training stands) saved as one .npz per checkpoint, named by the global step, written to a temporary name, flushed to
disk and renamed into place: a checkpoint is either complete or absent, whenever the process dies.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from dist_ae.errors import TrainingError, UsageError

NAME = re.compile(r"^ckpt-(\d{9})\.npz$")


def checkpoint_path(folder: Path, global_step: int) -> Path:
    return folder / f"ckpt-{global_step:09d}.npz"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in the folder, oldest first (temporary files of an interrupted write are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), folder / name) for name in os.listdir(folder) if (match := NAME.match(name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    checkpoints = list_checkpoints(folder)
    return checkpoints[-1][1] if checkpoints else None


def save(folder: Path, position, steps_per_epoch: int, variables: list, *, keep: int = 3) -> Path:
    """Writes the state at `position` (a trainer.Position) atomically and keeps the newest `keep` checkpoints.

    Raises TrainingError instead of saving a state with a NaN or infinite value in it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    global_step = position.epoch * steps_per_epoch + position.step
    arrays = {f"v{index:04d}": np.asarray(v.numpy()) for index, v in enumerate(variables)}
    broken = [variable_name(v) for v, a in zip(variables, arrays.values()) if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if broken:
        raise TrainingError(f"{', '.join(broken)} hold NaN or infinite values at step {global_step}; not checkpointed "
                            "(the last checkpoint is kept); try a lower --learning-rate")
    meta = {"epoch": position.epoch, "step": position.step, "epoch_loss_sum": position.epoch_loss_sum,
            "global_step": global_step, "steps_per_epoch": steps_per_epoch,
            "variables": [[variable_name(v), list(v.shape)] for v in variables]}
    final = checkpoint_path(folder, global_step)
    temporary = final.with_name(final.name + ".tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in folder.glob("ckpt-*.npz.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    return final


def variable_name(variable) -> str:
    """Keras variables have a path (`encoder/encoder_hidden/kernel`); plain tf.Variables a name."""
    return getattr(variable, "path", None) or variable.name.split(":")[0]


def read(path: Path) -> tuple[dict, list[np.ndarray]]:
    """Returns (meta, arrays) of a checkpoint, or raises UsageError when it is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = [archive[f"v{index:04d}"] for index in range(len(meta["variables"]))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise UsageError(f"{path}: corrupt checkpoint ({error}); move it aside to resume from an earlier one") from None
    return meta, arrays


def restore_values(path: Path, variables: list, meta: dict, arrays: list[np.ndarray]) -> tuple[int, int, float]:
    """Assigns a checkpoint's arrays to the variables; returns (epochs done, steps done of the next, their loss sum)."""
    shapes = [[variable_name(v), list(v.shape)] for v in variables]
    if meta["variables"] != shapes or [list(a.shape) for a in arrays] != [shape for _, shape in shapes]:
        raise UsageError(f"{path}: holds variables of a different model or optimizer; it cannot be resumed here")
    try:
        position = int(meta["epoch"]), int(meta.get("step", 0)), float(meta.get("epoch_loss_sum", 0.0))
    except (TypeError, ValueError, KeyError) as error:
        raise UsageError(f"{path}: corrupt checkpoint ({error}); move it aside to resume from an earlier one") from None
    for variable, value in zip(variables, arrays):
        variable.assign(value)
    return position
