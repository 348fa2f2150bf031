"""The ``vitcod`` unit contract: registry, Config validation, input checks, golden/float
agreement through the unit face, auto-encoder, board and demo configs."""
import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import vitcod as gv

u = units.get("vitcod")


def test_registered_with_the_contract():
    assert "vitcod" in units.names()
    for name in ("NAME", "INPUTS", "OUTPUTS", "Config", "golden", "simulate", "component",
                 "random_inputs", "demo_config", "board_config", "compare"):
        assert hasattr(u, name), name
    assert u.NAME == "vitcod" and u.OUTPUTS == ("out",)
    cfg = u.Config()
    assert (cfg.n_max, cfg.d_max, cfg.theta_d) == (197, 64, 50)


@pytest.mark.parametrize("field,value", [("lines", 1), ("macs_per_line", 0), ("n_max", 300),
                                         ("theta_d", -1), ("q_scale", 0.0),
                                         ("out_scale", float("nan")), ("lines", 2.5),
                                         ("g_max", 500), ("nnz_max", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        u.Config(**{field: value})


def test_bad_inputs_are_clear_errors():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=0, heads=2, n=10, d=4)
    with pytest.raises(ValueError, match="mask: expected shape"):
        u.golden(cfg, **{**inp, "mask": inp["mask"][:, :9, :9]})
    with pytest.raises(TypeError, match="mask: expected a boolean"):
        u.golden(cfg, **{**inp, "mask": inp["mask"].astype(np.int8)})
    with pytest.raises(ValueError, match="k: expected shape"):
        u.golden(cfg, **{**inp, "k": inp["k"][:, :, :3]})
    with pytest.raises(ValueError, match="v: values must fit signed 8-bit"):
        u.golden(cfg, **{**inp, "v": inp["v"].astype(np.int32) * 4})
    with pytest.raises(ValueError, match="exceeds Config.n_max"):
        u.golden(cfg, **u.random_inputs(cfg, seed=0, heads=1, n=30, d=4))
    dense = {**inp, "mask": np.zeros_like(inp["mask"])}           # every column global
    with pytest.raises(ValueError, match="G .* exceeds Config.g_max"):
        u.golden(cfg, **dense)


def test_golden_through_the_unit_is_within_bound_of_float():
    cfg = u.Config(n_max=40, d_max=16, g_max=40, theta_d=10)
    inp = u.random_inputs(cfg, seed=4, heads=3, n=40, d=16)
    out = u.golden(cfg, **inp)["out"]
    ref = u.float_reference(cfg, inp["q"], inp["k"], inp["v"], inp["mask"])
    bound = gv.error_bound(128 * cfg.v_scale / cfg.out_scale)
    assert out.dtype == np.int8 and out.shape == (3, 40, 16)
    assert np.abs(out - ref).max() <= bound


def test_autoencoder_in_golden_and_bypass():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=5, heads=3, n=12, d=4)
    rng = np.random.default_rng(5)
    ae = {"enc_w": rng.integers(-40, 40, (2, 3)), "enc_b": rng.integers(-50, 50, 2),
          "dec_w": rng.integers(-40, 40, (3, 2)), "dec_b": rng.integers(-50, 50, 3)}
    plain = u.golden(cfg, **inp)["out"]
    assert np.array_equal(u.golden(cfg, **inp, ae=None)["out"], plain)
    coded = u.golden(cfg, **inp, ae=ae)["out"]
    assert coded.shape == plain.shape and not np.array_equal(coded, plain)
    got, stats = u.simulate(cfg, **inp, ae=ae, simulator="amaranth", stalls=5)
    assert u.compare({"out": coded}, got) == [] and stats["autoencoder_cycles"] > 0
    with pytest.raises(ValueError, match="ae: missing"):
        u.golden(cfg, **inp, ae={"enc_w": ae["enc_w"]})


def test_board_configs():
    cfg = u.board_config("ulx3s")
    assert cfg.lines * cfg.macs_per_line >= 16 and cfg.n_max == 197 and cfg.d_max >= 64
    with pytest.raises(ValueError, match="does not fit the iCEBreaker"):
        u.board_config("icebreaker")
    with pytest.raises(ValueError, match="unknown board"):
        u.board_config("de10")


def test_demo_config_runs_bit_exact_with_stalls():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=9, heads=1)
    got, stats = u.simulate(cfg, **inp, simulator="amaranth", stalls=9)
    assert u.compare(u.golden(cfg, **inp), got) == []
    assert stats["cycles"] > 0 and stats["dense_busy"] > 0 and stats["sparse_busy"] > 0
