"""Mixed precision: layers compute in the policy's dtype with float32 variables and a float32 output, training still
learns, float16's loss scale skips overflowing steps on every replica alike and grows, and several steps per call
equal one step per call."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, cli_env, requires_horovod
from dist_ae.backends.base import create_backend
from dist_ae.config import TrainConfig
from dist_ae.model import build_models
from dist_ae.precision import resolve_precision
from dist_ae.trainer import Trainer

COMPUTE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def trainer_for(sample_arrays, **settings) -> Trainer:
    config = TrainConfig(data="sample", batch_size=20, seed=2, **settings)
    return Trainer(config, create_backend("default"), sample_arrays, say=lambda message: None)


@pytest.mark.parametrize("precision", list(COMPUTE))
def test_policy_dtypes_and_learning(sample_arrays, precision):
    encoder, decoder, autoencoder = build_models(precision)
    hidden = [encoder.get_layer("encoder_hidden"), encoder.get_layer("latent"), decoder.get_layer("decoder_hidden")]
    assert [layer.compute_dtype for layer in hidden] == [COMPUTE[precision]] * 3
    assert decoder.get_layer("reconstruction").compute_dtype == "float32"
    assert {v.dtype for v in autoencoder.weights} == {"float32"}
    assert autoencoder(np.zeros((2, 784), np.float32)).dtype == tf.float32
    assert encoder(np.zeros((2, 784), np.float32)).dtype == tf.as_dtype(COMPUTE[precision])

    trainer = trainer_for(sample_arrays, epochs=1, precision=precision)
    assert {v.dtype for v in trainer.state_variables[:8]} == {"float32"}
    untrained = trainer.evaluate()
    result = trainer.fit()[0]
    assert result.val_loss < 0.6 * untrained, (untrained, result.val_loss)


def test_auto_precision_is_float32_on_a_cpu():
    assert resolve_precision("auto", []) == "float32"
    assert resolve_precision("mixed_float16", []) == "mixed_float16"


def test_overflowing_float16_step_is_skipped_and_the_scale_adjusts(sample_arrays):
    trainer = trainer_for(sample_arrays, epochs=1, precision="mixed_float16")
    batches = trainer.batches(0)
    before = [v.numpy().copy() for v in trainer.autoencoder.weights]
    trainer.loss_scale.scale.assign(2.0**100)
    trainer.train_steps(batches, tf.constant(1))
    for old, variable in zip(before, trainer.autoencoder.weights):
        np.testing.assert_array_equal(old, variable.numpy())
    assert trainer.loss_scale.scale.numpy() == 2.0**99 and trainer.loss_scale.finite_steps.numpy() == 0
    trainer.loss_scale.scale.assign(2.0**15)
    trainer.train_steps(batches, tf.constant(3))
    assert trainer.loss_scale.finite_steps.numpy() == 3 and trainer.loss_scale.scale.numpy() == 2.0**15
    assert any(not np.array_equal(old, v.numpy()) for old, v in zip(before, trainer.autoencoder.weights))


def run_overflow_script(command, workdir) -> list[dict]:
    result = subprocess.run(command, cwd=ROOT, env=cli_env(workdir), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    # horovodrun prefixes each rank's lines with "[rank]<stdout>:"
    return [json.loads(line[line.index("{"):]) for line in result.stdout.splitlines() if '{"skipped"' in line]


def check_overflow_report(reports, replicas):
    assert reports
    for report in reports:
        assert report == {"skipped": True, "scale_after_overflow": 2.0**99, "applied": True,
                          "scale_after_growth": 2.0**16, "finite_steps": 0, "replicas": replicas}


def test_mirrored_replicas_skip_an_overflow_alike(workdir):
    check_overflow_report(run_overflow_script([sys.executable, "tests/overflow_step.py", "mirrored"], workdir), 2)


@requires_horovod
def test_horovod_ranks_skip_an_overflow_alike(workdir):
    reports = run_overflow_script(
        [shutil.which("horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "tests/overflow_step.py",
         "horovod"], workdir)
    assert len(reports) == 2
    check_overflow_report(reports, 2)


def test_several_steps_per_call_equal_one_step_per_call(sample_arrays):
    final = []
    for steps_per_call in (1, 7):
        trainer = trainer_for(sample_arrays, epochs=1, steps_per_call=steps_per_call, precision="float32")
        trainer.fit()
        final.append([v.numpy() for v in trainer.state_variables])
    for one, several in zip(*final):
        np.testing.assert_allclose(several, one, rtol=1e-6, atol=1e-7)
