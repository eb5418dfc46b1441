"""One float16 step whose scaled gradients overflow, then one that does not, on a given backend; prints JSON.

`python tests/overflow_step.py mirrored` (two logical CPU devices) or, per rank,
`horovodrun -np 2 ... python tests/overflow_step.py horovod`.
"""

import json
import sys

import numpy as np
import tensorflow as tf

from dist_ae import data
from dist_ae.backends.base import configure_cpu_devices, create_backend
from dist_ae.config import TrainConfig
from dist_ae.consistency import fingerprint
from dist_ae.precision import GROWTH_INTERVAL
from dist_ae.trainer import Trainer

strategy = sys.argv[1]
configure_cpu_devices(2)
backend = create_backend(strategy, cpu_devices=2)
config = TrainConfig(data="sample", epochs=1, batch_size=20, strategy=strategy, cpu_devices=2, precision="mixed_float16")
trainer = Trainer(config, backend, data.load("sample", say=lambda message: None), say=lambda message: None)
backend.broadcast_from_chief(trainer.state_variables)
batches = trainer.batches(0)


def weights():
    return fingerprint([np.asarray(v.numpy()) for v in trainer.autoencoder.weights]).tolist()


start = weights()
trainer.loss_scale.scale.assign(2.0**100)  # the float16 backward pass overflows at this scale
trainer.train_steps(batches, tf.constant(1))
after_overflow = weights()
overflow_scale = float(trainer.loss_scale.scale.numpy())
trainer.check_replicas(0)  # every replica skipped alike
trainer.loss_scale.scale.assign(2.0**15)
trainer.loss_scale.finite_steps.assign(GROWTH_INTERVAL - 1)
trainer.train_steps(batches, tf.constant(1))
trainer.check_replicas(1)
print(json.dumps({
    "skipped": after_overflow == start,
    "scale_after_overflow": overflow_scale,
    "applied": weights() != start,
    "scale_after_growth": float(trainer.loss_scale.scale.numpy()),
    "finite_steps": int(trainer.loss_scale.finite_steps.numpy()),
    "replicas": backend.num_replicas,
}), flush=True)
