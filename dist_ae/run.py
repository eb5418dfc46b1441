"""`dist-ae train` from start to end: check everything a user gave before anything is written, then build the backend,
load the digits, resume from the newest checkpoint if the log folder has one, train, and export.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from dist_ae import checkpoint
from dist_ae.config import TrainConfig, check_writable_logdir, read_saved_config
from dist_ae.errors import TrainingError, UsageError


def train(config: TrainConfig, say: Callable[[str], None] = print):
    """Runs one training job; returns the trainer's per-epoch results. Raises UsageError before writing anything
    when an input or setting is bad, TrainingError when training cannot go on, Preempted after a stop signal."""
    config = config.validate().with_logdir()
    logdir = Path(config.logdir)
    check_writable_logdir(logdir)
    saved = read_saved_config(logdir)
    if saved is not None and config.differences(saved) and not config.overwrite:
        raise UsageError(
            f"--logdir {logdir}: holds a run with other settings ({'; '.join(config.differences(saved))}); "
            "pick another --logdir, repeat its settings, or start over with --overwrite"
        )

    import tensorflow as tf

    from dist_ae import data
    from dist_ae.backends.base import configure_cpu_devices, create_backend

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    configure_cpu_devices(config.cpu_devices)
    backend = create_backend(config.strategy, cpu_devices=config.cpu_devices, fp16_allreduce=config.fp16_allreduce,
                             collective=config.collective, collective_timeout=config.collective_timeout)
    chief_say = say if backend.is_chief else (lambda message: None)
    arrays = data.load(config.data, synthetic_samples=config.synthetic_samples, seed=config.seed, say=chief_say)

    from dist_ae.events import RunFiles
    from dist_ae.trainer import Position, Trainer

    trainer = Trainer(config, backend, arrays, say=chief_say)
    chief_say(f"backend {backend.describe()}; global batch {config.batch_size} = "
              f"{backend.num_replicas} x {trainer.per_replica_batch_size}; {trainer.steps_per_epoch} steps per epoch")
    position = Position() if config.overwrite else resume(trainer, logdir / "checkpoints", chief_say)
    # Distributed: every worker starts from the chief's state, fresh or resumed.
    backend.broadcast_from_chief(trainer.state_variables)
    # Everything the user gave has been checked: from here on the chief writes.
    events = None
    if backend.is_chief:
        if config.overwrite:
            clear_run(logdir, chief_say)
        events = RunFiles(logdir, trainer, position.epoch, say=chief_say)  # only the chief writes
    try:
        with stop_signals(chief_say) as stop_requested, lost_workers_reported(backend.worker_index):
            results = train_and_export(config, trainer, events, position, logdir, chief_say, stop_requested)
    finally:
        if events is not None:
            events.close()
    return results


def train_and_export(config, trainer, events, position, logdir, say, stop_requested):
    """Trains the remaining epochs and exports the models (the chief); returns the per-epoch results."""
    if position.epoch >= config.epochs:
        say(f"already trained for {position.epoch} epochs (asked for {config.epochs}); nothing to train")
        results = []
    else:
        results = trainer.fit(position, events, stop_requested)
    # Every worker evaluates: the sum over workers' validation shards is a collective.
    val_loss = results[-1].val_loss if results else trainer.evaluate()
    if events is not None:
        folder = events.export(val_loss)
        say(f"done: validation loss {val_loss:.4f} after {config.epochs} epochs; logs in {logdir}, "
            f"models in {folder}; view with: tensorboard --logdir {logdir}")
    # Distributed: a last collective, so that no worker exits while another is still exporting (a worker whose
    # peers have gone logs lost-heartbeat errors on the way out).
    trainer.backend.sum_across_workers(np.zeros(1))
    return results


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "train", "validation", "export")


def clear_run(logdir: Path, say) -> None:
    """--overwrite: removes what an earlier run left in the log folder (and nothing else)."""
    removed = []
    for name in RUN_FILES:
        path = logdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        say(f"--overwrite: removed the earlier run's {', '.join(removed)} from {logdir}")


@contextlib.contextmanager
def stop_signals(say):
    """SIGTERM and SIGINT (what Slurm and Kubernetes send before they kill) ask training to stop after the current
    step with a checkpoint; a second signal stops at once. Yields the function the trainer polls."""
    requested = []

    def handler(signum, frame):
        if requested:
            signal.signal(signum, signal.SIG_DFL)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
        requested.append(signum)
        say(f"received {signal.Signals(signum).name}: stopping after this step, with a checkpoint")

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield lambda: False
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


SYMPTOM = re.compile(r"aborted|reset by peer|timed out|timeout|unavailable|deadline|closed|connection", re.IGNORECASE)
LOST_PEER = re.compile(r"/job:(chief|worker)/replica:\d+/task:(\d+)")


@contextlib.contextmanager
def lost_workers_reported(own_index: int = 0):
    """Turns a collective that failed because another worker went away into one line naming that worker."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.UnknownError, tf.errors.InternalError) as error:
        text = str(error)
        # TensorFlow's message names tasks, this worker's own among them: the lost one is another.
        peer = next((match for match in LOST_PEER.finditer(text) if int(match.group(2)) != own_index), None)
        horovod = "horovod" in text.lower() or "gloo" in text.lower()
        if not (peer or horovod or isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError))):
            raise
        who = f"{peer.group(1)} {peer.group(2)}" if peer else (
            "another Horovod rank (horovodrun names it)" if horovod else "another worker")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = next((line for line in lines if SYMPTOM.search(line)), lines[-1] if lines else type(error).__name__)
        raise TrainingError(f"lost contact with {who} ({reason}); rerun the same command to resume from the last "
                            "checkpoint") from None


def resume(trainer, folder: Path, say):
    """Restores the newest checkpoint (read by the chief, then broadcast); returns the trainer.Position it holds."""
    from dist_ae.trainer import Position

    backend = trainer.backend
    epoch, step, loss_sum = 0, 0, 0.0
    if backend.is_chief:
        path = checkpoint.latest_checkpoint(folder)
        if path is not None:
            meta, arrays = checkpoint.read(path)
            epoch, step, loss_sum = checkpoint.restore_values(path, trainer.state_variables, meta, arrays)
            where = f"epoch {epoch} of {trainer.config.epochs} done"
            if step:
                where += f", and step {step} of {trainer.steps_per_epoch} of epoch {epoch + 1}"
            say(f"resuming from {path} ({where})")
    # Distributed: every worker learns the chief's position (the weights follow in broadcast_from_chief).
    epoch, step, loss_sum = backend.sum_across_workers(np.array([epoch, step, loss_sum]))
    return Position(int(epoch), int(step), float(loss_sum))
