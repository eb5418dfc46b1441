"""What a run leaves in its log folder, written by the chief only: config.json, metrics.jsonl, TensorBoard events,
checkpoints/ and export/.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from dist_ae import checkpoint
from dist_ae.summaries import Summaries

EXPORTED_MODELS = ("encoder", "decoder", "autoencoder")


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunFiles:
    """The chief's side of a run: gets the trainer's events and turns them into files."""

    def __init__(self, logdir: Path, trainer, resumed_epoch: int, say=print):
        self.logdir = logdir
        self.say = say
        self.trainer = trainer
        self.config = trainer.config
        logdir.mkdir(parents=True, exist_ok=True)
        write_atomically(logdir / "config.json", self.config.to_json())
        self.metrics_path = logdir / "metrics.jsonl"
        # A run killed after logging an epoch but before its checkpoint repeats that epoch: keep one line per epoch.
        kept = [record for record in read_metrics(self.metrics_path) if record.get("epoch", 0) <= resumed_epoch]
        write_atomically(self.metrics_path, "".join(json.dumps(record) + "\n" for record in kept))
        self.checkpoints = logdir / "checkpoints"
        self.summaries = Summaries(logdir)
        if resumed_epoch == 0:
            self.summaries.config(dataclasses.asdict(self.config) | {"backend": trainer.backend.describe()})

    def on_steps(self, global_step: int, loss: float) -> None:
        self.summaries.step(global_step, loss)

    def save_checkpoint(self, position) -> Path:
        trainer = self.trainer
        self.last_checkpoint = checkpoint.save(self.checkpoints, position, trainer.steps_per_epoch,
                                               trainer.state_variables, keep=self.config.keep_checkpoints)
        return self.last_checkpoint

    def on_checkpoint(self, position) -> None:
        """A checkpoint within an epoch (--checkpoint-every, or on the way out after SIGTERM)."""
        path = self.save_checkpoint(position)
        self.say(f"checkpoint {path} (epoch {position.epoch + 1}, step {position.step})")

    def on_epoch(self, result, position) -> None:
        trainer, config = self.trainer, self.config
        record = dataclasses.asdict(result) | {
            "learning_rate": trainer.learning_rate,
            "num_replicas": trainer.backend.num_replicas,
            "num_workers": trainer.backend.num_workers,
            "global_batch_size": trainer.global_batch_size,
            "per_replica_batch_size": trainer.per_replica_batch_size,
            "steps": trainer.steps_per_epoch,
            "strategy": trainer.backend.name,
            "precision": trainer.precision,
        }
        if trainer.loss_scale is not None:
            record["loss_scale"] = float(trainer.loss_scale.scale.numpy())
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.summaries.epoch(record)
        last = result.epoch == config.epochs
        if config.image_every and (result.epoch % config.image_every == 0 or last):
            digits = trainer.validation_digits
            self.summaries.pictures(result.epoch, digits, trainer.arrays.y_test, trainer.encoder, trainer.decoder)
        self.save_checkpoint(position)

    def export(self, val_loss: float | None) -> Path:
        """encoder, decoder and autoencoder as .keras files, each written to a temporary name and renamed."""
        folder = self.logdir / "export"
        folder.mkdir(exist_ok=True)
        trainer = self.trainer
        for name in EXPORTED_MODELS:
            model = getattr(trainer, name)
            temporary = folder / f"{name}.tmp.keras"
            model.save(temporary)
            os.replace(temporary, folder / f"{name}.keras")
        about = {"loss": self.config.loss, "epochs": self.config.epochs, "val_loss": val_loss, "data": self.config.data}
        write_atomically(folder / "dist_ae.json", json.dumps(about, indent=2) + "\n")
        return folder

    def close(self) -> None:
        self.summaries.close()
