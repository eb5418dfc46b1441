"""Several hosts with TensorFlow's own collectives: MultiWorkerMirroredStrategy, configured from TF_CONFIG or from
Slurm's environment. Worker 0 (or the `chief` task, where TF_CONFIG names one) is the chief.

Keras 3's `model.fit` is broken with this strategy (keras-team/keras#20585); our own loop is what makes it work.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from dist_ae.backends.local import StrategyBackend
from dist_ae.errors import UsageError

COLLECTIVES = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}


def tf_config_workers(environ=os.environ) -> int:
    """How many chief and worker tasks TF_CONFIG names (0 without a usable TF_CONFIG)."""
    try:
        cluster = json.loads(environ.get("TF_CONFIG", "") or "{}").get("cluster", {})
    except (ValueError, AttributeError):
        return 0
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def cluster_resolver(environ=os.environ):
    """TF_CONFIG when it is set; otherwise Slurm's environment inside a Slurm job."""
    if environ.get("TF_CONFIG"):
        try:
            config = json.loads(environ["TF_CONFIG"])
            task, cluster = config["task"], config["cluster"]
            tasks = cluster[task["type"]]
            if not isinstance(tasks, list) or not all(isinstance(address, str) for address in tasks):
                raise TypeError(f"cluster[{task['type']!r}] must be a list of 'host:port'")
            if not 0 <= int(task["index"]) < len(tasks):
                raise ValueError(f"task index {task['index']} is not one of the {len(tasks)} {task['type']} tasks")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UsageError(f"TF_CONFIG: not a valid cluster description ({error}); it needs "
                             '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}') from None
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if environ.get("SLURM_JOB_ID") and environ.get("SLURM_PROCID"):
        return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=int(environ.get("DIST_AE_PORT_BASE", "8888")))
    raise UsageError("--strategy multiworker: needs TF_CONFIG (or a Slurm job) to find the other workers; "
                     "on one machine, start workers with `dist-ae launch --workers N -- ...`")


class MultiWorkerBackend(StrategyBackend):
    """MultiWorkerMirroredStrategy: every local device of every worker is a replica."""

    def __init__(self, *, collective: str = "auto", timeout_seconds: float = 0):
        resolver = cluster_resolver()
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=COLLECTIVES[collective],
            # A lost worker then ends the job with an error instead of leaving the others waiting forever.
            timeout_seconds=timeout_seconds or None,
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
        super().__init__(strategy, "multiworker")
        spec = resolver.cluster_spec().as_dict()
        chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
        self.num_workers = chiefs + workers
        task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
        self.worker_index = task_id if task_type == "chief" else task_id + chiefs
        self.local_replicas = len(strategy.extended.worker_devices)

    def sum_across_workers(self, values):
        values = np.asarray(values, dtype=np.float64)
        zeros = np.zeros_like(values)

        def this_workers_share(context):
            # Only the first local replica contributes, so the all-replica sum is the sum over workers.
            return tf.constant(values if context.replica_id_in_sync_group % self.local_replicas == 0 else zeros)

        per_replica = self.strategy.experimental_distribute_values_from_function(this_workers_share)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()

    def broadcast_from_chief(self, variables):
        # Distributed: the chief alone read the checkpoint; the others take its values, in one collective.
        flat = np.concatenate([np.ravel(v.numpy()).astype(np.float64) for v in variables])
        flat = self.sum_across_workers(flat if self.is_chief else np.zeros_like(flat))
        offset = 0
        for variable in variables:
            size = int(np.prod(variable.shape))
            variable.assign(flat[offset : offset + size].reshape(variable.shape).astype(variable.dtype))
            offset += size

    def describe(self):
        return (f"multiworker: {self.num_replicas} replica(s) on {self.num_workers} worker(s); "
                f"this is worker {self.worker_index}")
