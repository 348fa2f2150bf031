"""Fashion-MNIST (Zalando, MIT licence): IDX reader and the evaluation subset shipped with vitaccel.

The full data set is four IDX files (optionally gzipped) in one folder, as Debian's
``dataset-fashion-mnist`` installs them under :data:`DEFAULT_DIR`. The package ships the first
:data:`SUBSET_SIZE` test images and labels (``data/fashion_mnist/test_subset.npz``) and the first
:data:`CALIBRATION_SIZE` training images (``train_calibration.npz``), with the licence beside
them, so evaluation, calibration and tests run without the package or root.

Images are uint8 (n, 28, 28); labels uint8 (n,), classes :data:`CLASSES`.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "DEFAULT_DIR", "SUBSET_PATH", "SUBSET_SIZE", "read_idx", "load_split",
           "load_subset", "load_calibration", "find_data_dir", "load_test", "CALIBRATION_PATH",
           "CALIBRATION_SIZE"]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
SUBSET_PATH = Path(__file__).resolve().parent / "data" / "fashion_mnist" / "test_subset.npz"
SUBSET_SIZE = 1000
#: The first CALIBRATION_SIZE *training* images, shipped for calibration without the full set.
CALIBRATION_PATH = SUBSET_PATH.with_name("train_calibration.npz")
CALIBRATION_SIZE = 512

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """One IDX file (``.gz`` or plain) as a NumPy array; ``ValueError`` naming the file when it is
    not a well-formed IDX file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != want:
        raise ValueError(f"{path}: IDX header says {shape} ({want} bytes of data), "
                         f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"data folder {folder} has no {stem}[.gz] (expected the four Fashion-MNIST "
                     f"IDX files)")


def load_split(folder, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 28, 28), labels uint8 (n,))`` of ``split`` from an IDX folder."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data folder {folder} does not exist")
    images = read_idx(_find(folder, _FILES[split][0]))
    labels = read_idx(_find(folder, _FILES[split][1]))
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{folder}: {split} images have shape {images.shape} {images.dtype}, "
                         f"expected (n, 28, 28) uint8")
    if labels.shape != (len(images),) or labels.max(initial=0) > 9:
        raise ValueError(f"{folder}: {split} labels do not match the images ({labels.shape} for "
                         f"{len(images)} images, or a label above 9)")
    return images, labels


def load_subset() -> tuple[np.ndarray, np.ndarray]:
    """The shipped evaluation subset: the first :data:`SUBSET_SIZE` test images and labels."""
    with np.load(SUBSET_PATH) as z:
        return z["images"], z["labels"]


def load_calibration() -> np.ndarray:
    """The shipped calibration images: the first :data:`CALIBRATION_SIZE` training images."""
    with np.load(CALIBRATION_PATH) as z:
        return z["images"]


def find_data_dir(folder=None) -> Path | None:
    """``folder`` if given (it must exist), else :data:`DEFAULT_DIR` when present, else None."""
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"data folder {folder} does not exist")
        return folder
    return DEFAULT_DIR if DEFAULT_DIR.is_dir() else None


def load_test(folder=None, subset: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Test images, labels and a description: the full 10,000 from ``folder`` (or the system
    copy), or the shipped subset when ``subset`` or when no folder is found."""
    if not subset:
        found = find_data_dir(folder)
        if found is not None:
            images, labels = load_split(found, "test")
            return images, labels, f"Fashion-MNIST test set ({len(images)} images, {found})"
    images, labels = load_subset()
    return images, labels, f"Fashion-MNIST test subset (first {len(images)} images, shipped)"
