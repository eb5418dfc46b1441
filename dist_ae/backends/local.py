"""Backends on one host through tf.distribute: one device (the single-GPU or CPU fallback) and MirroredStrategy over
the local GPUs or logical CPU devices.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dist_ae.backends.base import Backend, tf_variable


class StrategyBackend(Backend):
    """A backend that is a tf.distribute strategy: it places variables, splits batches and all-reduces for us."""

    def __init__(self, strategy: tf.distribute.Strategy, name: str):
        self.strategy = strategy
        self.name = name
        self.num_replicas = strategy.num_replicas_in_sync

    def scope(self):
        return self.strategy.scope()

    def distribute(self, dataset_fn):
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def run(self, fn, args):
        return self.strategy.run(fn, args=args)

    def local_sum(self, per_replica):
        return tf.add_n(list(self.strategy.experimental_local_results(per_replica)))

    def all_replicas_finite(self, finite):
        # Distributed: gradients are combined later, inside the optimizer, so the replicas compare their verdicts.
        context = tf.distribute.get_replica_context()
        overflowed = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
        return overflowed == 0.0

    def replica_values(self, variables):
        # A mirrored variable holds one copy per device: read each, not the primary only.
        copies = [self.strategy.experimental_local_results(tf_variable(variable)) for variable in variables]
        return [[np.asarray(per_variable[replica].numpy()) for per_variable in copies] for replica in range(len(copies[0]))]

    def describe(self):
        devices = ", ".join(self.strategy.extended.worker_devices)
        return f"{self.name}: {self.num_replicas} replica(s) on {devices}"


class DefaultBackend(StrategyBackend):
    """One device: the first GPU if there is one, else the CPU. Needs nothing distributed."""

    xla_whole_step = True

    def __init__(self, gpus):
        device = "/gpu:0" if gpus else "/cpu:0"
        super().__init__(tf.distribute.OneDeviceStrategy(device), "default")


class MirroredBackend(StrategyBackend):
    """MirroredStrategy over all local GPUs, or over `--cpu-devices N` logical CPU devices when asked."""

    def __init__(self, gpus, cpu_devices: int):
        if cpu_devices or not gpus:
            count = max(cpu_devices, 1)
            devices = [f"/cpu:{index}" for index in range(count)]
        else:
            devices = [f"/gpu:{index}" for index in range(len(gpus))]
        super().__init__(tf.distribute.MirroredStrategy(devices), "mirrored")
