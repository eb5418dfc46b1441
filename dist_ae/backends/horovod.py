"""Horovod: one replica per rank, started by `horovodrun` (or mpirun). Gradients are combined with Horovod's grouped
allreduce, the state is broadcast from rank 0, and rank 0 is the chief. The only module that imports Horovod.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from dist_ae.backends.base import Backend, tf_variable
from dist_ae.errors import UsageError

INSTALL_HINT = "install it with `bash launch/install_horovod.sh` (Horovod 0.28.1 built for this TensorFlow; see README)"


def import_horovod():
    try:
        import horovod.tensorflow as hvd
    except ImportError as error:
        raise UsageError(f"--strategy horovod: Horovod is not installed ({error}); {INSTALL_HINT}") from None
    return hvd


class HorovodBackend(Backend):
    """One replica per Horovod rank; each rank sees only the GPU of its local rank."""

    name = "horovod"
    xla_apply = True  # the allreduce is done before the optimizer, which then touches only this rank's variables

    def __init__(self, *, fp16_allreduce: bool = False):
        hvd = import_horovod()
        self.hvd = hvd
        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            # One GPU per rank: the one of this rank's index on its host.
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        self.device = "/gpu:0" if gpus else "/cpu:0"
        self.num_replicas = hvd.size()
        self.num_workers = hvd.size()
        self.worker_index = hvd.rank()
        self.compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none

    def scope(self):
        return tf.device(self.device) if self.device != "/cpu:0" else contextlib.nullcontext()

    def distribute(self, dataset_fn):
        # Distributed: rank r is input pipeline r of size; it reads only its own replica's rows of each global batch.
        context = tf.distribute.InputContext(
            num_input_pipelines=self.hvd.size(), input_pipeline_id=self.hvd.rank(), num_replicas_in_sync=self.hvd.size()
        )
        return dataset_fn(context)

    def run(self, fn, args):
        return fn(*args)

    def local_sum(self, per_replica):
        return per_replica

    def combine_gradients(self, gradients):
        # Distributed: each rank's gradient is of its share of the global mean loss, so the sum over ranks is the
        # gradient of the global batch. One grouped allreduce for all tensors instead of one per variable.
        return self.hvd.grouped_allreduce(list(gradients), op=self.hvd.Sum, compression=self.compression)

    def sum_across_workers(self, values):
        values = np.asarray(values, dtype=np.float64)
        return self.hvd.allreduce(tf.constant(values), op=self.hvd.Sum, name=None).numpy()

    def broadcast_from_chief(self, variables):
        # Distributed: every rank starts from rank 0's weights and optimizer state (fresh or resumed).
        for variable in variables:
            variable.assign(self.hvd.broadcast(tf_variable(variable), root_rank=0))

    def describe(self):
        return f"horovod: {self.num_replicas} rank(s), this is rank {self.worker_index} on {self.device}"
