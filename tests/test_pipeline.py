"""The input pipeline: each epoch covers every training digit once across all shards, shards are disjoint, and the
order changes from epoch to epoch but repeats for the same seed."""

import numpy as np
import pytest
import tensorflow as tf

from dist_ae import pipeline
from dist_ae.errors import UsageError


def digit_ids(num_examples: int) -> tf.Tensor:
    """'Images' whose first pixel is the digit's index, so batches can be traced back to rows."""
    images = np.zeros((num_examples, 784), dtype=np.float32)
    images[:, 0] = np.arange(num_examples)
    return tf.constant(images)


def epoch_batches(images, *, seed, global_batch, pipelines, replicas, epochs=2):
    """{pipeline id: list of per-replica batches of row ids} over `epochs` epochs."""
    out = {}
    for pipeline_id in range(pipelines):
        context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=replicas)
        dataset = pipeline.train_dataset(images, seed=seed, global_batch_size=global_batch, first_epoch=0,
                                         last_epoch=epochs - 1, input_context=context)
        out[pipeline_id] = [batch[:, 0].numpy().astype(int) for batch in dataset]
    return out


@pytest.mark.parametrize("pipelines,replicas", [(1, 1), (1, 2), (2, 2), (2, 4)])
def test_every_digit_once_per_epoch_across_shards(pipelines, replicas):
    n, global_batch = 103, 20  # 5 full global batches; 3 digits dropped per epoch
    images = digit_ids(n)
    batches = epoch_batches(images, seed=7, global_batch=global_batch, pipelines=pipelines, replicas=replicas)
    steps = n // global_batch
    per_pipeline = steps * (replicas // pipelines)  # per-replica batches per epoch per pipeline
    for epoch in range(2):
        seen = np.concatenate([
            np.concatenate(batches[p][epoch * per_pipeline:(epoch + 1) * per_pipeline]) for p in range(pipelines)
        ])
        assert len(seen) == steps * global_batch
        assert len(np.unique(seen)) == len(seen)  # no digit twice in an epoch: shards are disjoint
    for p in range(pipelines):
        assert all(len(batch) == global_batch // replicas for batch in batches[p])


def test_global_batch_is_the_same_set_whatever_the_replicas():
    """Step s trains on the same digits whether one replica or four take it, which is why the losses agree."""
    images = digit_ids(200)
    one = epoch_batches(images, seed=3, global_batch=40, pipelines=1, replicas=1, epochs=1)[0]
    four = epoch_batches(images, seed=3, global_batch=40, pipelines=2, replicas=4, epochs=1)
    for step in range(5):
        shards = np.concatenate(four[0][2 * step:2 * step + 2] + four[1][2 * step:2 * step + 2])
        assert sorted(shards) == sorted(one[step])


def test_order_changes_between_epochs_and_repeats_for_a_seed():
    images = digit_ids(100)
    first = np.concatenate(epoch_batches(images, seed=1, global_batch=10, pipelines=1, replicas=1)[0])
    again = np.concatenate(epoch_batches(images, seed=1, global_batch=10, pipelines=1, replicas=1)[0])
    other = np.concatenate(epoch_batches(images, seed=2, global_batch=10, pipelines=1, replicas=1)[0])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[:100], first[100:])  # epoch 1 differs from epoch 0
    assert sorted(first[:100]) == sorted(first[100:]) == list(range(100))
    assert not np.array_equal(first, other)


def test_values_are_scaled_and_flat():
    images = np.array([[[0] * 28] * 28, [[255] * 28] * 28], dtype=np.uint8)
    scaled = pipeline.scale(images)
    assert scaled.shape == (2, 784) and scaled.dtype == np.float32
    assert scaled.min() == 0.0 and scaled.max() == 1.0


def test_batch_that_does_not_split_over_replicas_is_an_error():
    with pytest.raises(UsageError, match=r"--batch-size 100: does not divide evenly over 3 replicas; use a multiple of 3, such as 99 or 102"):
        pipeline.check_batch_for_replicas(100, 3)
    with pytest.raises(UsageError, match="larger than the 50 training digits"):
        pipeline.steps_per_epoch(50, 64)
