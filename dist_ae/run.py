"""`dist-ae train` from start to end: check everything a user gave before anything is written, then build the backend,
load the digits, resume from the newest checkpoint if the log folder has one, train, and export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from dist_ae import checkpoint
from dist_ae.config import TrainConfig, check_writable_logdir, read_saved_config
from dist_ae.errors import UsageError


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
    backend = create_backend(config.strategy, cpu_devices=config.cpu_devices, fp16_allreduce=config.fp16_allreduce)
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
        if resumed_epoch >= config.epochs:
            chief_say(f"already trained for {resumed_epoch} epochs (asked for {config.epochs}); nothing to train")
            results = []
        else:
            results = trainer.fit(resumed_epoch, events)
        # Every worker evaluates: the sum over workers' validation shards is a collective.
        val_loss = results[-1].val_loss if results else trainer.evaluate()
        if events is not None:
            folder = events.export(val_loss)
            chief_say(f"done: validation loss {val_loss:.4f} after {config.epochs} epochs; logs in {logdir}, "
                      f"models in {folder}; view with: tensorboard --logdir {logdir}")
    finally:
        if events is not None:
            events.close()
    return results


def resume(trainer, folder: Path, say) -> int:
    """Restores the newest checkpoint (read by the chief, then broadcast); returns the epochs it had completed."""
    backend = trainer.backend
    epoch = 0
    if backend.is_chief:
        path = checkpoint.latest_checkpoint(folder)
        if path is not None:
            meta, arrays = checkpoint.read(path)
            epoch = checkpoint.restore_values(path, trainer.autoencoder, trainer.optimizer, meta, arrays)
            say(f"resuming from {path} (epoch {epoch} of {trainer.config.epochs})")
    # Distributed: every worker learns the chief's epoch and starts from the chief's weights.
    epoch = int(backend.sum_across_workers(np.array([epoch]))[0])
    backend.broadcast_from_chief(trainer.state_variables)
    return epoch
