"""The notebook's autoencoder: a 784-256-2 encoder and a 2-256-784 decoder, each a Keras model of its own, and the
per-digit losses it can be trained with.
"""

from __future__ import annotations

import keras
import tensorflow as tf

LATENT_DIM = 2
HIDDEN_UNITS = 256
PIXELS = 784


def build_models(precision: str = "float32") -> tuple[keras.Model, keras.Model, keras.Model]:
    """Returns (encoder, decoder, autoencoder); the autoencoder is the decoder applied to the encoder's output.

    Args:
        precision: a Keras dtype policy (float32, mixed_float16, mixed_bfloat16) for every layer but the output
            layer, which stays float32 so that the sigmoid and the loss are computed at full precision.
    Built inside a distribution strategy's scope, its variables are that strategy's (always float32).
    """
    digits = keras.Input(shape=(PIXELS,), name="digits")
    hidden = keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="encoder_hidden", dtype=precision)(digits)
    latent = keras.layers.Dense(LATENT_DIM, name="latent", dtype=precision)(hidden)
    encoder = keras.Model(digits, latent, name="encoder")

    codes = keras.Input(shape=(LATENT_DIM,), name="codes")
    hidden = keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="decoder_hidden", dtype=precision)(codes)
    pixels = keras.layers.Dense(PIXELS, activation="sigmoid", name="reconstruction", dtype="float32")(hidden)
    decoder = keras.Model(codes, pixels, name="decoder")

    autoencoder = keras.Model(digits, decoder(encoder(digits)), name="autoencoder")
    return encoder, decoder, autoencoder


def per_digit_loss(name: str):
    """The loss of each digit, shape (n,), computed in float32.

    bce: per-pixel binary cross-entropy averaged over the 784 pixels: the likelihood of sigmoid outputs.
    cce: Keras' categorical cross-entropy over the 784 pixels, as the notebook compiled it.
    mse: mean squared error over the pixels.
    """
    functions = {
        "bce": keras.losses.binary_crossentropy,
        "cce": keras.losses.categorical_crossentropy,
        "mse": keras.losses.mean_squared_error,
    }
    function = functions[name]

    def loss(digits, reconstructions):
        return function(tf.cast(digits, tf.float32), tf.cast(reconstructions, tf.float32))

    return loss
