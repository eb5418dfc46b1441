"""`dist-ae bench`: training throughput in one process, against the notebook's way of training and against what the
machine's matrix unit can do. Every figure of a table comes from the same sitting; configurations are timed in
alternating rounds and the median round is reported, so a noisy neighbour slows all of them alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from dist_ae import data, pipeline
from dist_ae.backends import local
from dist_ae.config import TrainConfig
from dist_ae.model import build_models

GOALS = {
    "batch100_vs_baseline": 2.5,  # dist-ae default at batch 100 / the notebook's model.fit
    "batch1024_mfu": 0.70,  # of the measured matrix-product ceiling
    "overhead_within": 0.05,  # mirrored with one replica, Horovod with one rank, against default
}


@dataclasses.dataclass(frozen=True)
class Settings:
    synthetic_samples: int = 60000
    rounds: int = 5  # alternating timing rounds per configuration
    steps_per_round: int = 200  # training steps per round and configuration (at least one epoch on the sample)
    matmul_iterations: int = 200

    @classmethod
    def tiny(cls) -> "Settings":
        return cls(synthetic_samples=3000, rounds=2, steps_per_round=6, matmul_iterations=5)


def training_flops_per_sample(model: keras.Model) -> dict:
    """Multiply-adds of the Dense layers, counted as 2 FLOP each: forward; backward = the weight gradients (as
    many as forward) plus the input gradients of every layer but the first (nothing needs d(loss)/d(pixels)).
    Biases, activations and the loss are elementwise and left out (under 1%)."""
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    sizes = [int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]) for layer in dense]
    fed_by_pixels = [int(layer.kernel.shape[0]) == pipeline.PIXELS for layer in dense]
    forward = 2 * sum(sizes)
    backward = 2 * sum(sizes) + 2 * sum(size for size, first in zip(sizes, fed_by_pixels) if not first)
    return {"forward": forward, "backward": backward, "total": forward + backward}


def matmul_ceiling(batch: int, iterations: int) -> float:
    """FLOP/s of an XLA matrix product of the first layer's shape, (batch, 784) x (784, 256)."""
    x = tf.random.uniform((batch, 784))
    w = tf.random.uniform((784, 256))

    @tf.function(jit_compile=True)
    def products(x, w):
        total = tf.zeros((batch, 256))
        for i in tf.range(iterations):
            total += tf.matmul(x + tf.cast(i, tf.float32), w)  # the input changes, so the product is not hoisted
        return total

    products(x, w).numpy()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        products(x, w).numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * batch * 784 * 256 * iterations / best


class Baseline:
    """The notebook's way: Keras model.fit on numpy arrays, shuffled, batch 100, RMSprop, the same loss."""

    def __init__(self, arrays: data.MnistArrays, batch_size: int, seed: int):
        keras.utils.set_random_seed(seed)
        _, _, self.model = build_models()
        self.model.compile(optimizer=keras.optimizers.RMSprop(), loss="binary_crossentropy")
        self.x = pipeline.scale(arrays.x_train)
        self.batch_size = batch_size
        self.model.fit(self.x, self.x, batch_size=batch_size, epochs=1, shuffle=True, verbose=0)  # warm-up

    def time_round(self, steps: int) -> float:
        """Samples per second over about `steps` steps (whole epochs, timed without their start-up)."""
        per_epoch = -(-self.x.shape[0] // self.batch_size)
        epochs = max(1, round(steps / per_epoch))
        timer = EpochTimer()
        self.model.fit(self.x, self.x, batch_size=self.batch_size, epochs=epochs, shuffle=True, verbose=0,
                       callbacks=[timer])
        return self.x.shape[0] * epochs / sum(timer.seconds)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


class DistAE:
    """dist-ae's training loop on one backend, timed over its training calls only."""

    def __init__(self, arrays: data.MnistArrays, backend, batch_size: int, seed: int):
        from dist_ae.trainer import Trainer

        config = TrainConfig(data="bench", batch_size=batch_size, seed=seed, epochs=10**6, precision="auto")
        self.trainer = Trainer(config, backend, arrays, say=lambda message: None)
        self.batches = self.trainer.batches(0)
        self.time_round(self.trainer.config.steps_per_call)  # warm-up: tracing and XLA compilation

    def time_round(self, steps: int) -> float:
        trainer = self.trainer
        calls = max(1, round(steps / trainer.config.steps_per_call))
        started = time.perf_counter()
        for _ in range(calls):
            trainer.train_steps(self.batches, tf.constant(trainer.config.steps_per_call)).numpy()
        return calls * trainer.config.steps_per_call * trainer.global_batch_size / (time.perf_counter() - started)


def alternate(runners: dict, settings: Settings) -> dict:
    """Median samples/s of each runner over rounds in which every runner takes its turn."""
    rates = {name: [] for name in runners}
    for _ in range(settings.rounds):
        for name, runner in runners.items():
            rates[name].append(runner.time_round(settings.steps_per_round))
    return {name: statistics.median(values) for name, values in rates.items()}


def horovod_backend():
    """Horovod with one rank in this process (no horovodrun needed for a single rank), if Horovod is installed."""
    try:
        from dist_ae.backends.horovod import HorovodBackend

        return HorovodBackend()
    except Exception:  # not installed, or built without TensorFlow: that row is left out
        return None


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": len(tf.config.list_physical_devices("GPU")),
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


def run(settings: Settings, say=print) -> dict:
    """Measures everything; returns the report (also what --json writes)."""
    flops = training_flops_per_sample(build_models()[2])
    say("measuring the XLA matrix-product ceiling ...")
    ceiling = matmul_ceiling(1024, settings.matmul_iterations)
    datasets = {
        "sample": data.load("sample", say=lambda message: None),
        "synthetic": data.load("synthetic", synthetic_samples=settings.synthetic_samples, say=lambda message: None),
    }
    gpus = tf.config.list_physical_devices("GPU")
    hvd = horovod_backend()
    report = {"machine": machine(), "settings": dataclasses.asdict(settings), "flops_per_sample": flops,
              "matmul_ceiling_flops": ceiling, "goals": GOALS, "datasets": {}}
    for name, arrays in datasets.items():
        say(f"timing on {name} ({arrays.num_train} training digits) ...")
        runners = {
            "baseline_keras_fit_b100": Baseline(arrays, 100, seed=0),
            "default_b100": DistAE(arrays, local.DefaultBackend(gpus), 100, seed=0),
            "default_b1024": DistAE(arrays, local.DefaultBackend(gpus), 1024, seed=0),
            "mirrored1_b100": DistAE(arrays, local.MirroredBackend(gpus[:1], 0), 100, seed=0),
        }
        if hvd is not None:
            runners["horovod1_b100"] = DistAE(arrays, hvd, 100, seed=0)
        rates = alternate(runners, settings)
        baseline = rates["baseline_keras_fit_b100"]
        rows = {}
        for runner, rate in rates.items():
            rows[runner] = {
                "samples_per_sec": rate,
                "vs_baseline": rate / baseline,
                "vs_default_b100": rate / rates["default_b100"],
                "model_flops_per_sec": rate * flops["total"],
                "mfu": rate * flops["total"] / ceiling,
            }
        report["datasets"][name] = rows
    report["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report["summary"] = summarize(report)
    return report


def summarize(report: dict) -> dict:
    """The goals, judged on the synthetic data (enough steps per epoch at batch 1024) and on the sample."""
    out = {}
    for name, rows in report["datasets"].items():
        entry = {
            "batch100_vs_baseline": rows["default_b100"]["vs_baseline"],
            "batch1024_mfu": rows["default_b1024"]["mfu"],
            "mirrored1_overhead": 1.0 - rows["mirrored1_b100"]["vs_default_b100"],
        }
        if "horovod1_b100" in rows:
            entry["horovod1_overhead"] = 1.0 - rows["horovod1_b100"]["vs_default_b100"]
        entry["met"] = {
            "batch100_vs_baseline": entry["batch100_vs_baseline"] >= GOALS["batch100_vs_baseline"],
            "batch1024_mfu": entry["batch1024_mfu"] >= GOALS["batch1024_mfu"],
            "overhead": all(entry.get(key, 0.0) <= GOALS["overhead_within"]
                            for key in ("mirrored1_overhead", "horovod1_overhead")),
        }
        out[name] = entry
    return out


def table(report: dict) -> str:
    lines = [f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
             f"TensorFlow {report['machine']['tensorflow']}, Keras {report['machine']['keras']}",
             f"training cost: {report['flops_per_sample']['total'] / 1e6:.2f} MFLOP per sample "
             f"(forward {report['flops_per_sample']['forward'] / 1e6:.2f}, "
             f"backward {report['flops_per_sample']['backward'] / 1e6:.2f})",
             f"ceiling: XLA matmul (1024x784)x(784x256) = {report['matmul_ceiling_flops'] / 1e9:.1f} GFLOP/s", ""]
    header = f"{'data':<10} {'run':<24} {'samples/s':>11} {'x baseline':>10} {'x default':>10} {'MFU':>6}"
    lines += [header, "-" * len(header)]
    for name, rows in report["datasets"].items():
        for runner, row in rows.items():
            lines.append(f"{name:<10} {runner:<24} {row['samples_per_sec']:>11,.0f} {row['vs_baseline']:>10.2f} "
                         f"{row['vs_default_b100']:>10.2f} {row['mfu']:>6.1%}")
    lines.append("")
    for name, entry in report["summary"].items():
        parts = [f"batch 100 = {entry['batch100_vs_baseline']:.2f}x baseline (goal {GOALS['batch100_vs_baseline']}x)",
                 f"batch 1024 MFU {entry['batch1024_mfu']:.0%} (goal {GOALS['batch1024_mfu']:.0%})",
                 f"mirrored-1 overhead {entry['mirrored1_overhead']:+.1%}"]
        if "horovod1_overhead" in entry:
            parts.append(f"horovod-1 overhead {entry['horovod1_overhead']:+.1%}")
        lines.append(f"{name}: " + "; ".join(parts) + f" (goal within {GOALS['overhead_within']:.0%})")
    lines.append(f"peak memory: {report['peak_memory_bytes'] / 2**20:,.0f} MiB")
    return "\n".join(lines)


def main(tiny: bool = False, json_path: str | None = None) -> dict:
    report = run(Settings.tiny() if tiny else Settings())
    print(table(report))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_path}")
    return report
