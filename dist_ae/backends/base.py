"""What the training loop asks of a way of distributing it, and the choice of backend from `--strategy`."""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import os
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
    xla_whole_step: bool = False  # whether the optimizer's update may be XLA-compiled with the step (no collectives)
    xla_apply: bool = False  # whether the optimizer's update may be XLA-compiled on its own, after the combine

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

    def all_replicas_finite(self, finite: tf.Tensor) -> tf.Tensor:
        """Called per replica with whether its combined gradients are finite: true only if they are on every replica,
        so that an overflowing step is skipped by all alike."""
        return finite

    def sum_across_workers(self, values: np.ndarray) -> np.ndarray:
        """Eager: element-wise sum of a float64 array over all workers (identity with one worker)."""
        return np.asarray(values, dtype=np.float64)

    def gather_across_workers(self, row: np.ndarray) -> np.ndarray:
        """Eager: every worker's `row` (same length on each), stacked in worker order: (num_workers, len(row))."""
        table = np.zeros((self.num_workers, len(row)), dtype=np.float64)
        table[self.worker_index] = row
        return self.sum_across_workers(table)

    def broadcast_from_chief(self, variables) -> None:
        """Eager: makes every worker's copy of `variables` equal to the chief's (no-op with one worker)."""

    def replica_values(self, variables) -> list[list[np.ndarray]]:
        """Eager: for each of this worker's replicas, its own copy of each variable, as numpy arrays."""
        return [[np.asarray(variable.numpy()) for variable in variables]]

    def describe(self) -> str:
        return f"{self.name}: {self.num_replicas} replica(s) on {self.num_workers} worker(s)"


def tf_variable(variable):
    """The TensorFlow variable behind a Keras variable (which wraps one), or the variable itself."""
    import keras

    return variable.value if isinstance(variable, keras.Variable) else variable


def configure_cpu_devices(count: int) -> None:
    """Splits the physical CPU into `count` logical devices; must run before TensorFlow first uses a device."""
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # TensorFlow already initialised its devices (possible only when used as a library)
        raise UsageError(f"--cpu-devices {count}: {error}") from None


def started_by_horovod(environ=os.environ) -> bool:
    """True in a process that horovodrun (or mpirun with several ranks) started."""
    if "HOROVOD_RANK" in environ:
        return True
    for size in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if int(environ.get(size, "1") or 1) > 1:
            return importlib.util.find_spec("horovod") is not None
    return False


def resolve_strategy(strategy: str, num_gpus: int, environ=os.environ) -> str:
    """What `auto` means here: horovod under horovodrun, mirrored with several GPUs, else default."""
    if strategy != "auto":
        return strategy
    if started_by_horovod(environ):
        return "horovod"
    from dist_ae.backends.multiworker import tf_config_workers

    if tf_config_workers(environ) > 1:
        return "multiworker"
    return "mirrored" if num_gpus > 1 else "default"


def create_backend(strategy: str, *, cpu_devices: int = 0, fp16_allreduce: bool = False, collective: str = "auto",
                   collective_timeout: float = 0) -> Backend:
    """The backend named by `--strategy` (see resolve_strategy for `auto`)."""
    from dist_ae.backends import local

    gpus = tf.config.list_physical_devices("GPU")
    strategy = resolve_strategy(strategy, len(gpus))
    if fp16_allreduce and strategy != "horovod":
        raise UsageError(f"--fp16-allreduce: compresses Horovod's allreduce only; it does not apply to --strategy {strategy}")
    if strategy == "horovod":
        from dist_ae.backends.horovod import HorovodBackend

        return HorovodBackend(fp16_allreduce=fp16_allreduce)
    if strategy == "multiworker":
        from dist_ae.backends.multiworker import MultiWorkerBackend

        return MultiWorkerBackend(collective=collective, timeout_seconds=collective_timeout)
    if strategy == "default":
        return local.DefaultBackend(gpus)
    if strategy == "mirrored":
        return local.MirroredBackend(gpus, cpu_devices)
    raise UsageError(f"--strategy {strategy}: unknown strategy")
