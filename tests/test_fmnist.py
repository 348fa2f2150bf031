"""Fashion-MNIST reader: IDX parsing (plain and gzip), folder loading, the shipped subsets, errors."""
import gzip
import struct

import numpy as np
import pytest

from vitaccel.golden import fmnist


def write_idx(path, array, gz=True):
    a = np.asarray(array, np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape)
    data = head + a.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def fake_folder(tmp_path, n=5, gz=True):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    ext = ".gz" if gz else ""
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{ext}", imgs, gz)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte{ext}", labels, gz)
    return imgs, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trip(tmp_path, gz):
    imgs, labels = fake_folder(tmp_path, gz=gz)
    got_i, got_l = fmnist.load_split(tmp_path, "test")
    assert np.array_equal(got_i, imgs) and np.array_equal(got_l, labels)
    assert got_i.dtype == np.uint8


def test_idx_errors_name_the_file(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        fmnist.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 28, 28) + b"\x00" * 10)
    with pytest.raises(ValueError, match="bytes of data"):
        fmnist.read_idx(short)
    with pytest.raises(ValueError, match="does not exist"):
        fmnist.load_split(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="has no t10k-images"):
        fmnist.load_split(tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        fmnist.load_split(tmp_path, "valid")


def test_shipped_subsets_and_licence():
    imgs, labels = fmnist.load_subset()
    assert imgs.shape == (fmnist.SUBSET_SIZE, 28, 28) and imgs.dtype == np.uint8
    assert labels.shape == (fmnist.SUBSET_SIZE,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [107, 105, 111, 93, 115, 87, 97, 95, 95, 95]
    cal = fmnist.load_calibration()
    assert cal.shape == (fmnist.CALIBRATION_SIZE, 28, 28) and cal.dtype == np.uint8
    assert "Zalando" in (fmnist.SUBSET_PATH.parent / "LICENSE").read_text()


def test_load_test_falls_back_to_the_subset(tmp_path):
    imgs, labels, what = fmnist.load_test(subset=True)
    assert len(imgs) == fmnist.SUBSET_SIZE and "subset" in what
    fake_folder(tmp_path)
    imgs, labels, what = fmnist.load_test(tmp_path)
    assert len(imgs) == 5 and str(tmp_path) in what
    with pytest.raises(ValueError, match="does not exist"):
        fmnist.load_test(tmp_path / "missing")


@pytest.mark.skipif(fmnist.find_data_dir() is None, reason="full Fashion-MNIST not installed")
def test_full_set_matches_the_shipped_subset():
    imgs, labels = fmnist.load_split(fmnist.DEFAULT_DIR, "test")
    assert imgs.shape == (10000, 28, 28)
    sub_i, sub_l = fmnist.load_subset()
    assert np.array_equal(imgs[:1000], sub_i) and np.array_equal(labels[:1000], sub_l)
