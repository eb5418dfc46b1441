"""TensorBoard for a run: loss curves for training and validation on one chart, the step-level loss, learning rate and
throughput, and each epoch's pictures: digits beside their reconstructions, the 2-D latent space coloured by digit,
and the decoder's manifold. Written by the chief only.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training hosts
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RECONSTRUCTION_DIGITS = 16
MANIFOLD_SIDE = 15


def figure_to_image(figure: Figure) -> np.ndarray:
    """A matplotlib figure as a uint8 (1, height, width, 4) batch for tf.summary.image."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return tf.image.decode_png(buffer.getvalue(), channels=4)[tf.newaxis].numpy()


def reconstruction_figure(digits: np.ndarray, reconstructions: np.ndarray) -> Figure:
    count = digits.shape[0]
    figure = Figure(figsize=(count * 0.6, 1.6))
    axes = figure.subplots(2, count, squeeze=False)
    for column in range(count):
        for row, images in enumerate((digits, reconstructions)):
            axis = axes[row, column]
            axis.imshow(images[column].reshape(28, 28), cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_ylabel("digit", fontsize=7)
    axes[1, 0].set_ylabel("decoded", fontsize=7)
    figure.subplots_adjust(left=0.04, right=0.99, top=0.98, bottom=0.02, wspace=0.05, hspace=0.05)
    return figure


def latent_figure(codes: np.ndarray, labels: np.ndarray, epoch: int) -> Figure:
    figure = Figure(figsize=(5.5, 4.5))
    axis = figure.subplots()
    points = axis.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=4, alpha=0.8)
    colorbar = figure.colorbar(points, ax=axis, ticks=range(10))
    colorbar.set_label("digit")
    axis.set_xlabel("z[0]")
    axis.set_ylabel("z[1]")
    axis.set_title(f"latent space of the validation digits, epoch {epoch}", fontsize=9)
    figure.tight_layout()
    return figure


def manifold_grid(codes: np.ndarray, side: int = MANIFOLD_SIDE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side x side grid of latent points spanning the 1st..99th percentile of the codes: (z0 values, z1 values, points)."""
    low = np.percentile(codes, 1, axis=0)
    high = np.percentile(codes, 99, axis=0)
    z0 = np.linspace(low[0], high[0], side)
    z1 = np.linspace(high[1], low[1], side)  # top row is the largest z[1], as on the latent plot
    points = np.array([[a, b] for b in z1 for a in z0], dtype=np.float32)
    return z0, z1, points


def manifold_figure(z0: np.ndarray, z1: np.ndarray, decoded: np.ndarray, epoch: int) -> Figure:
    side = len(z0)
    tiles = decoded.reshape(side, side, 28, 28).transpose(0, 2, 1, 3).reshape(side * 28, side * 28)
    figure = Figure(figsize=(5.5, 5.5))
    axis = figure.subplots()
    axis.imshow(tiles, cmap="gray", vmin=0.0, vmax=1.0, extent=(z0[0], z0[-1], z1[-1], z1[0]), aspect="auto")
    axis.set_xlabel("z[0]")
    axis.set_ylabel("z[1]")
    axis.set_title(f"digits decoded from a grid of latent points, epoch {epoch}", fontsize=9)
    figure.tight_layout()
    return figure


class Summaries:
    """TensorBoard writers in Keras' layout: logdir/train and logdir/validation, so both losses share a chart."""

    def __init__(self, logdir: Path):
        self.train = tf.summary.create_file_writer(str(logdir / "train"))
        self.validation = tf.summary.create_file_writer(str(logdir / "validation"))

    def config(self, settings: dict) -> None:
        with self.train.as_default(step=0):
            table = "\n".join(f"| {key} | {value} |" for key, value in sorted(settings.items()))
            tf.summary.text("config", "| setting | value |\n|---|---|\n" + table)

    def step(self, global_step: int, loss: float) -> None:
        with self.train.as_default(step=global_step):
            tf.summary.scalar("batch_loss", loss)

    def epoch(self, record: dict) -> None:
        step = record["epoch"]
        with self.train.as_default(step=step):
            tf.summary.scalar("epoch_loss", record["loss"])
            tf.summary.scalar("learning_rate", record["learning_rate"])
            tf.summary.scalar("samples_per_sec", record["samples_per_sec"])
            if "loss_scale" in record:
                tf.summary.scalar("loss_scale", record["loss_scale"])
        with self.validation.as_default(step=step):
            tf.summary.scalar("epoch_loss", record["val_loss"])
        self.flush()

    def pictures(self, epoch: int, digits, labels, encoder, decoder) -> None:
        """Each epoch's images, from the validation digits and the current encoder and decoder."""
        # Plain calls, not predict(): under a multi-worker strategy predict() would be a collective the chief runs alone.
        codes = encoder(digits, training=False).numpy()
        # Spread over the whole split, so that every class shows up (the sample's split is ordered by digit).
        picked = np.linspace(0, len(digits) - 1, min(RECONSTRUCTION_DIGITS, len(digits))).astype(int)
        shown = digits[picked]
        reconstructions = decoder(codes[picked], training=False).numpy()
        z0, z1, points = manifold_grid(codes)
        decoded = decoder(points, training=False).numpy()
        with self.validation.as_default(step=epoch):
            tf.summary.image("reconstructions", figure_to_image(reconstruction_figure(shown, reconstructions)))
            tf.summary.image("latent_space", figure_to_image(latent_figure(codes, labels, epoch)))
            tf.summary.image("manifold", figure_to_image(manifold_figure(z0, z1, decoded, epoch)))
        self.flush()

    def flush(self) -> None:
        self.train.flush()
        self.validation.flush()

    def close(self) -> None:
        self.train.close()
        self.validation.close()
