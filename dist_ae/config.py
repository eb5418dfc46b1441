"""Every setting of a training run in one frozen dataclass, with the notebook's defaults, its range checks, and the
JSON form saved beside each run (enough to repeat it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
from pathlib import Path

from dist_ae.errors import UsageError

LOSSES = ("bce", "cce", "mse")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "mirrored", "multiworker", "horovod")
COLLECTIVES = ("auto", "ring", "nccl")

MAX_EPOCHS = 1_000_000
MAX_CPU_DEVICES = 64
MAX_SYNTHETIC = 10_000_000

# Settings that change what training computes: a checkpoint written under other values is not resumed.
TRAJECTORY_FIELDS = ("data", "batch_size", "learning_rate", "loss", "seed", "synthetic_samples", "scale_lr", "warmup_epochs",
                     "precision")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the notebook's (batch 100, 50 epochs, RMSprop at Keras' 0.001)."""

    data: str = "auto"
    logdir: str = ""
    epochs: int = 50
    batch_size: int = 100  # global: split evenly over all replicas of all workers
    learning_rate: float = 1e-3
    loss: str = "bce"
    seed: int = 0
    strategy: str = "auto"
    cpu_devices: int = 0
    steps_per_call: int = 10
    jit_compile: bool = True
    synthetic_samples: int = 12000
    image_every: int = 1
    check_every: int = 0  # compare replicas' weights every N epochs as well as at the end
    scale_lr: bool = False  # learning rate x number of replicas (the large-batch recipe)
    warmup_epochs: float = 0.0  # with scale_lr: ramp from the base rate to the scaled one over these epochs
    fp16_allreduce: bool = False  # Horovod: send gradients as float16
    checkpoint_every: int = 0  # steps between checkpoints within an epoch (0: at the end of each epoch only)
    keep_checkpoints: int = 3
    deterministic: bool = False  # TensorFlow's op determinism: a resumed run ends bit-identical to an unbroken one
    overwrite: bool = False  # start over in a log folder that holds another run
    precision: str = "auto"  # auto, float32, mixed_float16, mixed_bfloat16
    collective: str = "auto"  # multiworker: ring, nccl (GPUs) or auto
    collective_timeout: float = 120.0  # multiworker: seconds a collective may wait for a lost worker

    def validate(self) -> "TrainConfig":
        """Returns self, or raises UsageError naming the first setting out of range."""
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise UsageError(f"--epochs {self.epochs}: must be from 1 to {MAX_EPOCHS:,}")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed {self.seed}: must be from 0 to 2**32 - 1")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size}: must be a positive number of digits")
        if not self.learning_rate > 0 or self.learning_rate != self.learning_rate or self.learning_rate == float("inf"):
            raise UsageError(f"--learning-rate {self.learning_rate}: must be a positive, finite number")
        if self.loss not in LOSSES:
            raise UsageError(f"--loss {self.loss}: unknown loss; choose one of {', '.join(LOSSES)}")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"--strategy {self.strategy}: unknown strategy; choose one of {', '.join(STRATEGIES)}")
        if not 0 <= self.cpu_devices <= MAX_CPU_DEVICES:
            raise UsageError(f"--cpu-devices {self.cpu_devices}: must be 0 (off) or a count up to {MAX_CPU_DEVICES}")
        if self.steps_per_call < 1:
            raise UsageError(f"--steps-per-call {self.steps_per_call}: must be at least 1")
        if not 20 <= self.synthetic_samples <= MAX_SYNTHETIC:
            raise UsageError(f"--synthetic-samples {self.synthetic_samples}: must be from 20 to {MAX_SYNTHETIC:,} digits")
        if self.image_every < 0:
            raise UsageError(f"--image-every {self.image_every}: must be 0 (never) or a positive number of epochs")
        if self.checkpoint_every < 0:
            raise UsageError(f"--checkpoint-every {self.checkpoint_every}: must be 0 (epochs only) or a number of steps")
        if self.keep_checkpoints < 1:
            raise UsageError(f"--keep-checkpoints {self.keep_checkpoints}: must keep at least 1")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.collective not in COLLECTIVES:
            raise UsageError(f"--collective {self.collective}: choose one of {', '.join(COLLECTIVES)}")
        if not self.collective_timeout >= 0:
            raise UsageError(f"--collective-timeout {self.collective_timeout}: must be 0 (none) or a number of seconds")
        if self.check_every < 0:
            raise UsageError(f"--check-every {self.check_every}: must be 0 (at the end only) or a positive number of epochs")
        if self.warmup_epochs < 0 or self.warmup_epochs != self.warmup_epochs:
            raise UsageError(f"--warmup-epochs {self.warmup_epochs}: must be 0 or more")
        if self.warmup_epochs and not self.scale_lr:
            raise UsageError(f"--warmup-epochs {self.warmup_epochs}: ramps up to the scaled learning rate; add --scale-lr")
        return self

    def with_logdir(self) -> "TrainConfig":
        """Fills in the default log folder: a new, time-stamped folder under runs/."""
        if self.logdir:
            return self
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        candidate = Path("runs") / stamp
        suffix = 1
        while candidate.exists():
            suffix += 1
            candidate = Path("runs") / f"{stamp}-{suffix}"
        return dataclasses.replace(self, logdir=str(candidate))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def differences(self, saved: dict) -> list[str]:
        """The trajectory settings in which a saved config differs from this one, as 'name: saved -> now'."""
        mine = dataclasses.asdict(self)
        return [f"{name}: {saved[name]!r} -> {mine[name]!r}" for name in TRAJECTORY_FIELDS
                if name in saved and saved[name] != mine[name]]


def read_saved_config(logdir: Path) -> dict | None:
    path = logdir / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: unreadable run configuration ({error}); move the folder aside or pick another --logdir") from None


def check_writable_logdir(logdir: Path) -> None:
    """Raises UsageError unless the log folder exists as a writable folder or can be created; leaves nothing behind."""
    probe = logdir
    while not probe.exists():
        if probe.is_symlink():
            raise UsageError(f"--logdir {logdir}: {probe} is a broken symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--logdir {logdir}: {probe} is a file, not a folder")
    if logdir.exists() and any(not os.access(path, os.W_OK) for path in [logdir, *logdir.iterdir()]):
        raise UsageError(f"--logdir {logdir}: is not writable")
    try:  # permissions alone do not tell (root, read-only file systems): try it
        tempfile.TemporaryDirectory(dir=probe, prefix=".dist-ae-probe-").cleanup()
    except OSError as error:
        raise UsageError(f"--logdir {logdir}: {probe} is not writable ({error.strerror})") from None
