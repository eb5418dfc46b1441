"""tf.data pipelines from checked MNIST arrays: one input pipeline's shard of every epoch's shuffled global batches,
and the validation digits, scaled to [0, 1] and flattened to 784.

The epoch's order is a stateless shuffle seeded by (seed, epoch): every worker computes the same permutation and
keeps only the rows of its own replicas, so shards are disjoint, cover each epoch exactly once, and repeat run to run.
Each epoch has floor(N / global_batch_size) steps; the last partial global batch is dropped, so that every replica
of every worker takes the same number of steps (a replica that stepped alone would wait forever in the all-reduce).
The dropped digits differ from epoch to epoch, since the order does.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dist_ae.errors import UsageError

PIXELS = 784


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) in 0..255 -> float32 (N, 784) in [0, 1]."""
    return images.reshape(-1, PIXELS).astype(np.float32) / np.float32(255.0)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
    steps = num_examples // global_batch_size
    if steps < 1:
        raise UsageError(
            f"--batch-size {global_batch_size}: larger than the {num_examples} training digits; "
            f"use at most {num_examples}"
        )
    return steps


def check_batch_for_replicas(global_batch_size: int, num_replicas: int) -> int:
    """Returns the per-replica batch size, or raises UsageError when the global batch does not split evenly."""
    if global_batch_size % num_replicas:
        low = global_batch_size // num_replicas * num_replicas
        suggestion = f"{low} or {low + num_replicas}" if low else str(num_replicas)
        raise UsageError(
            f"--batch-size {global_batch_size}: does not divide evenly over {num_replicas} replicas; "
            f"use a multiple of {num_replicas}, such as {suggestion}"
        )
    return global_batch_size // num_replicas


def epoch_order(num_examples: int, seed: int, epoch) -> tf.Tensor:
    """The permutation of the training digits for one epoch; the same on every worker."""
    seed_pair = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64), seed=seed_pair)


def train_dataset(
    images: tf.Tensor,
    *,
    seed: int,
    global_batch_size: int,
    first_epoch: int,
    last_epoch: int,
    input_context: tf.distribute.InputContext,
    skip_steps: int = 0,
) -> tf.data.Dataset:
    """Per-replica batches of epochs first_epoch..last_epoch (0-based, inclusive) for one input pipeline.

    Args:
        images: float32 (N, 784), already scaled: held in memory, so each batch is one gather (the cache).
        input_context: which pipeline this is and how many replicas it feeds; a pipeline feeding several local
            replicas yields their batches in replica order, step after step, as tf.distribute hands them out.
        skip_steps: steps of first_epoch already trained (a resumed run starts at the next one).
    Returns:
        A dataset of float32 (per_replica_batch, 784) tensors, prefetched.
    """
    num_examples = int(images.shape[0])
    steps = steps_per_epoch(num_examples, global_batch_size)
    num_replicas = input_context.num_replicas_in_sync
    per_replica = check_batch_for_replicas(global_batch_size, num_replicas)
    # Distributed: each input pipeline keeps only the batch rows of the replicas it feeds.
    local_replicas = num_replicas // input_context.num_input_pipelines
    first_replica = input_context.input_pipeline_id * local_replicas

    def epoch_batches(epoch):
        order = epoch_order(num_examples, seed, epoch)[: steps * global_batch_size]
        order = tf.reshape(order, [steps, num_replicas, per_replica])[:, first_replica : first_replica + local_replicas]
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [-1, per_replica]))

    return (
        tf.data.Dataset.range(first_epoch, last_epoch + 1)
        .flat_map(epoch_batches)
        .skip(skip_steps * local_replicas)  # only row indices are skipped: no digit is gathered for them
        .map(lambda rows: tf.gather(images, rows), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def validation_dataset(images: np.ndarray, *, batch_size: int, shard_index: int = 0, num_shards: int = 1) -> tf.data.Dataset:
    """Every validation digit once, in order, as float32 (<=batch_size, 784) batches; sharded by worker."""
    rows = scale(images[shard_index::num_shards])
    return tf.data.Dataset.from_tensor_slices(rows).batch(batch_size).prefetch(tf.data.AUTOTUNE)
