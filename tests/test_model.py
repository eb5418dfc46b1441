"""The notebook's architecture, exactly: layer sizes, parameter count, and encoder and decoder as models of their own."""

import numpy as np

from dist_ae.model import build_models, per_digit_loss


def test_parameter_count_and_shapes():
    encoder, decoder, autoencoder = build_models()
    assert autoencoder.count_params() == 403_730
    assert encoder.count_params() == 784 * 256 + 256 + 256 * 2 + 2
    assert decoder.count_params() == 2 * 256 + 256 + 256 * 784 + 784
    digits = np.random.default_rng(0).random((5, 784), dtype=np.float32)
    codes = encoder(digits)
    assert tuple(codes.shape) == (5, 2)
    reconstructions = decoder(codes)
    assert tuple(reconstructions.shape) == (5, 784)
    np.testing.assert_allclose(autoencoder(digits), reconstructions, rtol=1e-6)
    assert float(np.min(reconstructions)) >= 0.0 and float(np.max(reconstructions)) <= 1.0  # sigmoid output


def test_layers_are_the_notebooks():
    encoder, decoder, _ = build_models()
    dense = [layer for model in (encoder, decoder) for layer in model.layers if hasattr(layer, "units")]
    assert [(layer.units, layer.activation.__name__) for layer in dense] == [
        (256, "relu"), (2, "linear"), (256, "relu"), (784, "sigmoid")
    ]


def test_losses_per_digit():
    rng = np.random.default_rng(1)
    digits = rng.random((3, 784), dtype=np.float32)
    guess = np.clip(rng.random((3, 784), dtype=np.float32), 0.01, 0.99)
    bce = per_digit_loss("bce")(digits, guess).numpy()
    expected = -np.mean(digits * np.log(guess) + (1 - digits) * np.log(1 - guess), axis=1)
    np.testing.assert_allclose(bce, expected, rtol=1e-4)
    mse = per_digit_loss("mse")(digits, guess).numpy()
    np.testing.assert_allclose(mse, np.mean((digits - guess) ** 2, axis=1), rtol=1e-5)
    cce = per_digit_loss("cce")(digits, guess).numpy()
    np.testing.assert_allclose(cce, -np.sum(digits * np.log(guess / guess.sum(axis=1, keepdims=True)), axis=1), rtol=1e-4)
