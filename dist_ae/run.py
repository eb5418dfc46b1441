"""`dist-ae train` from start to end: check everything a user gave before anything is written, then build the backend,
load the digits, resume from the newest checkpoint if the log folder has one, train, and export.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Callable

import numpy as np

from dist_ae import checkpoint
from dist_ae.config import TrainConfig, check_writable_logdir, read_saved_config
from dist_ae.errors import TrainingError, UsageError


def train(config: TrainConfig, say: Callable[[str], None] = print):
    """Runs one training job; returns the trainer's per-epoch results. Raises UsageError before writing anything
    when an input or setting is bad."""
    config = config.validate().with_logdir()
    logdir = Path(config.logdir)
    check_writable_logdir(logdir)
    saved = read_saved_config(logdir)
    if saved is not None and config.differences(saved):
        raise UsageError(
            f"--logdir {logdir}: holds a run with other settings ({'; '.join(config.differences(saved))}); "
            "pick another --logdir or repeat its settings"
        )

    from dist_ae import data
    from dist_ae.backends.base import configure_cpu_devices, create_backend

    configure_cpu_devices(config.cpu_devices)
    backend = create_backend(config.strategy, cpu_devices=config.cpu_devices, fp16_allreduce=config.fp16_allreduce,
                             collective=config.collective, collective_timeout=config.collective_timeout)
    chief_say = say if backend.is_chief else (lambda message: None)
    arrays = data.load(config.data, synthetic_samples=config.synthetic_samples, seed=config.seed, say=chief_say)

    from dist_ae.events import RunFiles
    from dist_ae.trainer import Trainer

    trainer = Trainer(config, backend, arrays, say=chief_say)
    chief_say(f"backend {backend.describe()}; global batch {config.batch_size} = "
              f"{backend.num_replicas} x {trainer.per_replica_batch_size}; {trainer.steps_per_epoch} steps per epoch")
    resumed_epoch = resume(trainer, logdir / "checkpoints", chief_say)
    events = None
    if backend.is_chief:
        events = RunFiles(logdir, trainer, resumed_epoch)  # only the chief writes
    try:
        with lost_workers_reported():
            results = train_and_export(config, trainer, events, resumed_epoch, logdir, chief_say)
    finally:
        if events is not None:
            events.close()
    return results


def train_and_export(config, trainer, events, resumed_epoch, logdir, say):
    """Trains the remaining epochs and exports the models (the chief); returns the per-epoch results."""
    if resumed_epoch >= config.epochs:
        say(f"already trained for {resumed_epoch} epochs (asked for {config.epochs}); nothing to train")
        results = []
    else:
        results = trainer.fit(resumed_epoch, events)
    # Every worker evaluates: the sum over workers' validation shards is a collective.
    val_loss = results[-1].val_loss if results else trainer.evaluate()
    if events is not None:
        folder = events.export(val_loss)
        say(f"done: validation loss {val_loss:.4f} after {config.epochs} epochs; logs in {logdir}, "
            f"models in {folder}; view with: tensorboard --logdir {logdir}")
    return results


SYMPTOM = re.compile(r"aborted|reset by peer|timed out|timeout|unavailable|deadline|closed|connection", re.IGNORECASE)
LOST_PEER = re.compile(r"/job:(chief|worker)/replica:\d+/task:(\d+)")


@contextlib.contextmanager
def lost_workers_reported():
    """Turns a collective that failed because another worker went away into one line naming that worker."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.UnknownError, tf.errors.InternalError) as error:
        text = str(error)
        peer = LOST_PEER.search(text)
        horovod = "horovod" in text.lower() or "gloo" in text.lower()
        if not (peer or horovod or isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError))):
            raise
        who = f"{peer.group(1)} {peer.group(2)}" if peer else "another worker"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = next((line for line in lines if SYMPTOM.search(line)), lines[-1] if lines else type(error).__name__)
        raise TrainingError(f"lost contact with {who} ({reason}); rerun the same command to resume from the last "
                            "checkpoint") from None


def resume(trainer, folder: Path, say) -> int:
    """Restores the newest checkpoint (read by the chief, then broadcast); returns the epochs it had completed."""
    backend = trainer.backend
    epoch = 0
    if backend.is_chief:
        path = checkpoint.latest_checkpoint(folder)
        if path is not None:
            meta, arrays = checkpoint.read(path)
            epoch = checkpoint.restore_values(path, trainer.state_variables, meta, arrays)
            say(f"resuming from {path} (epoch {epoch} of {trainer.config.epochs})")
    # Distributed: every worker learns the chief's epoch and starts from the chief's weights.
    epoch = int(backend.sum_across_workers(np.array([epoch]))[0])
    backend.broadcast_from_chief(trainer.state_variables)
    return epoch
