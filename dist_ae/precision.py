"""Mixed precision: which Keras dtype policy a run uses (`--precision`), and the dynamic loss scale that float16
needs so that small gradients do not flush to zero. The output layer and the loss always stay float32.
"""

from __future__ import annotations

import tensorflow as tf

from dist_ae.config import PRECISIONS  # noqa: F401  (the choices, defined with the other settings)
INITIAL_LOSS_SCALE = 2.0**15
GROWTH_INTERVAL = 2000  # finite steps in a row before the scale doubles (Keras' LossScaleOptimizer default)


def resolve_precision(precision: str, gpus) -> str:
    """`auto`: float16 with loss scaling on CUDA GPUs whose tensor cores take it but not bfloat16 (compute capability
    7.x), bfloat16 on GPUs that have it (8.0 and newer: no loss scale needed), float32 on CPUs and older GPUs."""
    if precision != "auto":
        return precision
    if not gpus:
        return "float32"  # measured: no gain from bfloat16 on a CPU for this model
    capabilities = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    lowest = min(capabilities)
    if lowest >= (8, 0):
        return "mixed_bfloat16"
    if lowest >= (7, 0):
        return "mixed_float16"
    return "float32"


class DynamicLossScale:
    """The loss is multiplied by `scale` before differentiation and the gradients divided by it after; a step whose
    combined gradients are not finite is skipped (on every replica alike, since the check is of the gradients all
    replicas share) and halves the scale; GROWTH_INTERVAL finite steps in a row double it.

    Created inside the backend's scope: under a strategy the two variables are mirrored and updated identically by
    every replica (ONLY_FIRST_REPLICA aggregation).
    """

    def __init__(self, initial: float = INITIAL_LOSS_SCALE, growth_interval: int = GROWTH_INTERVAL):
        mirrored = dict(synchronization=tf.VariableSynchronization.ON_WRITE,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, trainable=False)
        self.scale = tf.Variable(initial, dtype=tf.float32, name="loss_scale", **mirrored)
        self.finite_steps = tf.Variable(0, dtype=tf.int64, name="loss_scale_finite_steps", **mirrored)
        self.growth_interval = growth_interval

    @property
    def variables(self) -> list:
        return [self.scale, self.finite_steps]

    def update(self, finite: tf.Tensor) -> None:
        """After a step: halve on overflow, double after growth_interval finite steps."""
        grow = tf.logical_and(finite, self.finite_steps + 1 >= self.growth_interval)
        new_scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), tf.maximum(self.scale / 2.0, 1.0))
        self.scale.assign(new_scale)
        self.finite_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)), self.finite_steps + 1, 0))


def all_finite(gradients) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
