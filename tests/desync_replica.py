"""Knocks the last replica's weights out of step and checks that the replica consistency check names it.

Run as `python tests/desync_replica.py mirrored` (two logical CPU devices) or under
`horovodrun -np 2 ... python tests/desync_replica.py horovod`. Prints `in sync: <fingerprint>` and then
`caught: <the error>` on every worker, and exits 0; exits 1 if the drift went unnoticed.
"""

import sys

import tensorflow as tf

from dist_ae import data
from dist_ae.backends.base import configure_cpu_devices, create_backend
from dist_ae.config import TrainConfig
from dist_ae.errors import TrainingError
from dist_ae.trainer import Trainer

strategy = sys.argv[1]
configure_cpu_devices(2)
backend = create_backend(strategy, cpu_devices=2)
config = TrainConfig(data="sample", epochs=1, batch_size=20, strategy=strategy, cpu_devices=2)
trainer = Trainer(config, backend, data.load("sample", say=lambda message: None), say=lambda message: None)
backend.broadcast_from_chief(trainer.state_variables)
print("in sync:", trainer.check_replicas(0), flush=True)

kernel = trainer.autoencoder.weights[0]
if strategy == "mirrored":
    last_copy = backend.strategy.experimental_local_results(kernel.value)[-1]
    last_copy.assign_add(tf.fill(last_copy.shape, 1e-6))
elif backend.worker_index == backend.num_workers - 1:
    kernel.assign_add(tf.fill(kernel.shape, 1e-6))
try:
    trainer.check_replicas(1)
except TrainingError as error:
    print("caught:", error, flush=True)
    sys.exit(0)
print("drift not caught", flush=True)
sys.exit(1)
