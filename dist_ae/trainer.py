"""The one training loop: the notebook's autoencoder built in the backend's scope, several steps per tf.function call
(forward, loss scaled for the global batch, gradients, combine, apply), validation after every epoch, and the chief's
events (metrics, TensorBoard, checkpoints) between epochs. Every backend runs this same code.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from dist_ae import consistency, pipeline
from dist_ae.backends.base import Backend
from dist_ae.config import TrainConfig
from dist_ae.data import MnistArrays
from dist_ae.errors import Preempted, TrainingError
from dist_ae.model import build_models, per_digit_loss
from dist_ae.precision import DynamicLossScale, all_finite, resolve_precision

VALIDATION_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: `epoch` epochs completed and `step` steps of the next one, with the loss summed over
    those steps (so that a resumed epoch still reports the mean over all of its steps)."""

    epoch: int = 0
    step: int = 0
    epoch_loss_sum: float = 0.0


@dataclasses.dataclass
class EpochResult:
    epoch: int  # 1-based: the number of epochs completed
    loss: float
    val_loss: float
    epoch_seconds: float
    samples_per_sec: float
    weights_fingerprint: str | None = None  # sha256 of the training state, the same on every replica
    replicas_checked: int = 0


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from `base` to `target` over `warmup_steps` steps, then `target` (Goyal et al.'s warmup)."""

    def __init__(self, base: float, target: float, warmup_steps: int):
        self.base, self.target, self.warmup_steps = float(base), float(target), int(warmup_steps)

    def __call__(self, step):
        if self.warmup_steps <= 0:
            return keras.ops.convert_to_tensor(self.target, "float32")
        done = keras.ops.minimum(keras.ops.cast(step, "float32") / self.warmup_steps, 1.0)
        return self.base + (self.target - self.base) * done

    def get_config(self):
        return {"base": self.base, "target": self.target, "warmup_steps": self.warmup_steps}


class Trainer:
    """Trains the autoencoder on `arrays` with `backend`. The model, optimizer and loss live here; the backend decides
    only placement, batch delivery, gradient combination and who the chief is."""

    def __init__(self, config: TrainConfig, backend: Backend, arrays: MnistArrays, say: Callable[[str], None] = print):
        self.config = config
        self.backend = backend
        self.arrays = arrays
        self.say = say
        self.global_batch_size = config.batch_size
        self.per_replica_batch_size = pipeline.check_batch_for_replicas(config.batch_size, backend.num_replicas)
        self.steps_per_epoch = pipeline.steps_per_epoch(arrays.num_train, config.batch_size)
        # The same seed on every worker gives every replica the same initial weights before any broadcast.
        keras.utils.set_random_seed(config.seed)
        self.precision = resolve_precision(config.precision, tf.config.list_logical_devices("GPU"))
        with backend.scope():
            self.encoder, self.decoder, self.autoencoder = build_models(self.precision)
            # A fixed name: checkpoints match variables by path, and Keras numbers unnamed optimizers per process.
            self.optimizer = keras.optimizers.RMSprop(learning_rate=self.learning_rate_schedule(), name="rmsprop")
            self.optimizer.build(self.autoencoder.trainable_variables)
            # float16 alone needs a loss scale; bfloat16 has float32's exponent range.
            self.loss_scale = DynamicLossScale() if self.precision == "mixed_float16" else None
        self.loss_fn = per_digit_loss(config.loss)
        with tf.device("/cpu:0"):
            self.train_images = tf.constant(pipeline.scale(arrays.x_train))
        self.validation = pipeline.validation_dataset(
            arrays.x_test, batch_size=VALIDATION_BATCH, shard_index=backend.worker_index, num_shards=backend.num_workers
        )
        self.train_steps = self.make_train_function()
        self.validation_loss_sum = tf.function(self.loss_sum, jit_compile=config.jit_compile, reduce_retracing=True)

    def learning_rate_schedule(self):
        """The base rate; with --scale-lr, the base rate times the replicas, reached after --warmup-epochs."""
        config = self.config
        if not config.scale_lr:
            return config.learning_rate
        target = config.learning_rate * self.backend.num_replicas
        return WarmupSchedule(config.learning_rate, target, round(config.warmup_epochs * self.steps_per_epoch))

    @property
    def state_variables(self) -> list:
        """Everything training changes: the model's weights, the optimizer's slots and step count, the loss scale."""
        scale = self.loss_scale.variables if self.loss_scale else []
        return list(self.autoencoder.weights) + list(self.optimizer.variables) + scale

    def check_replicas(self, epoch: int) -> str:
        """Raises TrainingError when any replica's state differs from replica 0's; returns the fingerprint."""
        return consistency.check_replicas(self.backend, self.state_variables, epoch)

    @property
    def validation_digits(self) -> np.ndarray:
        """All validation digits, scaled and flattened (for the chief's pictures)."""
        return pipeline.scale(self.arrays.x_test)

    def loss_sum(self, digits):
        """Sum of the per-digit loss over a batch."""
        return tf.reduce_sum(self.loss_fn(digits, self.autoencoder(digits, training=False)))

    def make_train_function(self):
        """Returns train_steps(iterator, num_steps) -> this worker's sum of per-digit losses over those steps."""
        model, optimizer, backend = self.autoencoder, self.optimizer, self.backend
        trainable = model.trainable_variables
        global_batch_size = float(self.global_batch_size)
        loss_scale = self.loss_scale

        def loss_and_gradients(digits, scale):
            with tf.GradientTape() as tape:
                per_digit = self.loss_fn(digits, model(digits, training=True))
                # Distributed: each replica divides by the global batch, so the replicas' gradients sum to the
                # gradient of the global batch's mean loss, whatever the number of replicas.
                scaled = tf.reduce_sum(per_digit) / global_batch_size * scale
            return tf.reduce_sum(per_digit), tape.gradient(scaled, trainable)

        whole_step_in_xla = self.config.jit_compile and backend.xla_whole_step
        if self.config.jit_compile and not whole_step_in_xla:
            # XLA takes forward, loss and backward; the combine and apply stay outside it, since collectives
            # (Horovod's, and mirrored variables on several devices) have no XLA kernels.
            loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

        apply = lambda gradients: optimizer.apply(gradients, trainable)  # noqa: E731
        if self.config.jit_compile and backend.xla_apply and not whole_step_in_xla:
            apply = tf.function(apply, jit_compile=True)

        def replica_step(digits):
            scale = loss_scale.scale.read_value() if loss_scale else 1.0
            loss, gradients = loss_and_gradients(digits, scale)
            gradients = backend.combine_gradients(gradients)
            if loss_scale is None:
                apply(gradients)
                return loss
            finite = backend.all_replicas_finite(all_finite(gradients))
            # An overflowing step applies zero gradients: RMSprop then leaves every weight as it was.
            apply([tf.where(finite, g / scale, tf.zeros_like(g)) for g in gradients])
            loss_scale.update(finite)
            return loss

        if whole_step_in_xla:  # one device: the optimizer's update joins the compiled step
            replica_step = tf.function(replica_step, jit_compile=True)

        @tf.function
        def train_steps(iterator, num_steps):
            total = tf.constant(0.0, tf.float32)
            for _ in tf.range(num_steps):
                total += backend.local_sum(backend.run(replica_step, (next(iterator),)))
            return total

        return train_steps

    def batches(self, first_epoch: int, first_step: int = 0):
        """An iterator over per-replica batches from step first_step of epoch first_epoch (0-based) to the end."""

        def dataset_fn(context):
            return pipeline.train_dataset(
                self.train_images,
                seed=self.config.seed,
                global_batch_size=self.global_batch_size,
                first_epoch=first_epoch,
                last_epoch=self.config.epochs - 1,
                input_context=context,
                skip_steps=first_step,
            )

        return iter(self.backend.distribute(dataset_fn))

    def evaluate(self) -> float:
        """Mean per-digit loss over every validation digit; each worker takes its shard and the sums are added up."""
        total, count = 0.0, 0
        for digits in self.validation:
            total += float(self.validation_loss_sum(digits))
            count += int(digits.shape[0])
        total, count = self.backend.sum_across_workers(np.array([total, count]))
        return float(total / count)

    @property
    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def fit(self, start: Position = Position(), events=None, stop_requested: Callable[[], bool] = lambda: False) -> list[EpochResult]:
        """Trains from `start` (epochs and steps already done, e.g. resumed) to config.epochs.

        `events` (the chief's only) gets on_steps(global_step, loss) after every call, on_checkpoint(position)
        every --checkpoint-every steps, and on_epoch(result, position) after every epoch.
        `stop_requested` is polled after every call; when it is true on any worker, every worker stops after the
        same step, the chief checkpoints there, and Preempted is raised.
        """
        config, steps = self.config, self.steps_per_epoch
        iterator = self.batches(start.epoch, start.step)
        results = []
        for epoch in range(start.epoch, config.epochs):
            resumed_here = epoch == start.epoch
            done = start.step if resumed_here else 0
            epoch_loss = start.epoch_loss_sum if resumed_here else 0.0
            progress = None
            if events is not None:
                self.say(f"Epoch {epoch + 1}/{config.epochs}")
                # A live bar on a terminal; one line per epoch in a log file or under a launcher.
                progress = keras.utils.Progbar(steps, verbose=1 if sys.stdout.isatty() else 2,
                                               stateful_metrics=["loss", "samples/s"])
            started, first_done = time.perf_counter(), done
            shown = []
            while done < steps:
                count = min(config.steps_per_call, steps - done)
                if config.checkpoint_every:  # calls end on checkpoint steps
                    global_step = epoch * steps + done
                    count = min(count, config.checkpoint_every - global_step % config.checkpoint_every)
                local = float(self.train_steps(iterator, tf.constant(count)))
                # Metrics are summed over all workers once per call; a stop asked of any worker rides along, so
                # that every worker stops after the same step.
                call_loss, stops = self.backend.sum_across_workers(np.array([local, float(stop_requested())]))
                done += count
                global_step = epoch * steps + done
                if not math.isfinite(call_loss):
                    raise TrainingError(
                        f"the training loss became {call_loss} at step {global_step} (epoch {epoch + 1}); stopped "
                        "without checkpointing this state (the last checkpoint is kept); try a lower --learning-rate"
                    )
                epoch_loss += call_loss
                elapsed = time.perf_counter() - started
                mean_call_loss = call_loss / (count * self.global_batch_size)
                # The bar shows the epoch's running mean, as Keras' does; TensorBoard's batch_loss has each call's.
                shown = [("loss", epoch_loss / (done * self.global_batch_size)),
                         ("samples/s", (done - first_done) * self.global_batch_size / elapsed)]
                position = Position(epoch, done, epoch_loss) if done < steps else Position(epoch + 1, 0, 0.0)
                if events is not None:
                    events.on_steps(global_step, mean_call_loss)
                    if done < steps:  # the epoch's last update waits for the validation loss
                        progress.update(done, shown)
                if stops and done < steps:
                    if events is not None:
                        events.on_checkpoint(position)
                    raise Preempted(position)
                if config.checkpoint_every and global_step % config.checkpoint_every == 0 and done < steps:
                    if events is not None:
                        events.on_checkpoint(position)
            epoch_seconds = time.perf_counter() - started
            val_loss = self.evaluate()
            if not math.isfinite(val_loss):
                raise TrainingError(f"the validation loss became {val_loss} after epoch {epoch + 1}; stopped without "
                                    "checkpointing this state (the last checkpoint is kept); try a lower --learning-rate")
            result = EpochResult(
                epoch=epoch + 1,
                loss=epoch_loss / (steps * self.global_batch_size),
                val_loss=val_loss,
                epoch_seconds=epoch_seconds,
                samples_per_sec=(steps - first_done) * self.global_batch_size / epoch_seconds,
            )
            if epoch + 1 == config.epochs or (config.check_every and (epoch + 1) % config.check_every == 0):
                result.weights_fingerprint = self.check_replicas(epoch + 1)
                result.replicas_checked = self.backend.num_replicas
            if events is not None:
                progress.update(steps, shown + [("val_loss", val_loss)])
                events.on_epoch(result, Position(epoch + 1, 0, 0.0))
            results.append(result)
            if stops and epoch + 1 < config.epochs:
                if events is not None:
                    self.say(f"checkpoint {events.last_checkpoint} (epoch {epoch + 2}, step 0)")
                raise Preempted(Position(epoch + 1, 0, 0.0))
        return results
