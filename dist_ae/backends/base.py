"""What the training loop asks of a way of distributing it, and the choice of backend from `--strategy`."""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from dist_ae.errors import UsageError


class Backend(abc.ABC):
    """One way of running the training loop's replicas.

    Attributes:
        name: the `--strategy` value this backend serves.
        num_replicas: replicas in sync over all workers; the global batch is split evenly over them.
        num_workers: processes taking part (hosts, or Horovod ranks).
        worker_index: this process's index; worker 0 is the chief, which alone writes logs, checkpoints, exports.
    """

    name: str
    num_replicas: int
    num_workers: int = 1
    worker_index: int = 0

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @abc.abstractmethod
    def scope(self) -> contextlib.AbstractContextManager:
        """Where variables live: the model and optimizer are built inside it."""

    @abc.abstractmethod
    def distribute(self, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
        """Returns an iterable of per-replica batches, calling dataset_fn once per input pipeline of this worker."""

    @abc.abstractmethod
    def run(self, fn: Callable, args: tuple):
        """Runs fn on every local replica (inside a tf.function); returns its per-replica results."""

    @abc.abstractmethod
    def local_sum(self, per_replica) -> tf.Tensor:
        """Sum of a per-replica value over this worker's replicas (no communication between workers)."""

    def combine_gradients(self, gradients: Sequence[tf.Tensor]) -> Sequence[tf.Tensor]:
        """Called per replica: gradients summed over all replicas. Under tf.distribute, Keras' optimizer does this
        itself (an all-reduce inside `apply`), so the default passes them through."""
        return gradients

    def sum_across_workers(self, values: np.ndarray) -> np.ndarray:
        """Eager: element-wise sum of a float64 array over all workers (identity with one worker)."""
        return np.asarray(values, dtype=np.float64)

    def broadcast_from_chief(self, variables) -> None:
        """Eager: makes every worker's copy of `variables` equal to the chief's (no-op with one worker)."""

    def describe(self) -> str:
        return f"{self.name}: {self.num_replicas} replica(s) on {self.num_workers} worker(s)"


def configure_cpu_devices(count: int) -> None:
    """Splits the physical CPU into `count` logical devices; must run before TensorFlow first uses a device."""
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # TensorFlow already initialised its devices (possible only when used as a library)
        raise UsageError(f"--cpu-devices {count}: {error}") from None


def create_backend(strategy: str, *, cpu_devices: int = 0) -> Backend:
    """The backend named by `--strategy`; `auto` takes `mirrored` when more than one GPU is visible, else `default`."""
    from dist_ae.backends import local

    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "auto":
        strategy = "mirrored" if len(gpus) > 1 else "default"
    if strategy == "default":
        return local.DefaultBackend(gpus)
    if strategy == "mirrored":
        return local.MirroredBackend(gpus, cpu_devices)
    raise UsageError(f"--strategy {strategy}: unknown strategy")
