"""`vitaccel eval | infer | calibrate` on the shipped model and data: output, JSON rows, PNG/NPY
input, and one clear error line (exit 2) on bad input."""
import json

import numpy as np
import pytest

from vitaccel import cli
from vitaccel.golden import fmnist
from vitaccel.model import png


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_rows_and_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    code, out, err = run(capsys, "eval", "--subset", "--limit", "20", "--variants", "float",
                         "int8", "heatvit", "--json", str(path))
    assert code == 0, err
    rows = json.loads(path.read_text())
    assert [r["variant"] for r in rows] == ["float", "int8", "heatvit"]
    for r in rows:
        for key in ("variant", "top1", "macs_per_image", "cycles_per_image", "images_per_s"):
            assert key in r
        assert 0.5 <= r["top1"] <= 1.0 and r["images"] == 20
    assert rows[0]["cycles_per_image"] is None            # the float model has no hardware
    assert rows[2]["macs_per_image"] < rows[1]["macs_per_image"]     # pruned tokens
    assert rows[1]["cycles_per_image"] > 0 and rows[1]["images_per_s"] > 0
    assert "| heatvit |" in out


def test_infer_png_and_npy(tmp_path, capsys):
    images, labels = fmnist.load_subset()
    a = png.write_png(tmp_path / "a.png", images[0])
    b = tmp_path / "b.npy"
    np.save(b, images[1])
    assert np.array_equal(png.read_png(a), images[0])
    code, out, err = run(capsys, "infer", str(a), str(b), "--variant", "vitcod")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "cycles" in lines[0] and "vitcod=" in lines[0]
    assert fmnist.CLASSES[labels[0]] in lines[0]


@pytest.mark.parametrize("make,message", [
    (lambda p: np.save(p / "x.npy", np.zeros((32, 32), np.uint8)), "expected a 28 x 28"),
    (lambda p: np.save(p / "x.npy", np.zeros((28, 28), np.float32)), "expected uint8"),
    (lambda p: (p / "x.npy").write_bytes(b"junk"), "x.npy"),
])
def test_infer_bad_images_one_line(tmp_path, capsys, make, message):
    make(tmp_path)
    code, out, err = run(capsys, "infer", str(tmp_path / "x.npy"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_eval_and_calibrate_bad_input_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "--data", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "calibrate", "int8", "--images", "8")
    assert code == 2 and "too small" in err
    code, _, err = run(capsys, "calibrate", "resnet")
    assert code == 2 and "unknown variant" in err


def test_calibrate_writes_every_units_config(tmp_path, capsys):
    path = tmp_path / "cal.json"
    code, out, err = run(capsys, "calibrate", "vitality", "--images", "64", "--json", str(path))
    assert code == 0, err
    rep = json.loads(path.read_text())
    assert len(rep["blocks"]) == 6
    assert all("g_shift" in b["units"]["vitality"] for b in rep["blocks"])
    assert "g_shift=" in out
