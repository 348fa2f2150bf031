"""Unit ``vitality``: the contract (registry, Config validation, input errors, boards) and the
RTL == golden check through cocotb + Verilator."""
import dataclasses

import numpy as np
import pytest

from vitaccel import units
from vitaccel.sim.tools import have_verilator

u = units.get("vitality")

needs_verilator = pytest.mark.skipif(not have_verilator(), reason="verilator not installed")


def test_registry_contract():
    assert "vitality" in units.names()
    for name in ("NAME", "INPUTS", "OUTPUTS", "Config", "golden", "simulate", "component",
                 "random_inputs", "demo_config", "board_config", "compare"):
        assert hasattr(u, name), name
    assert u.INPUTS == ("q", "k", "v")
    assert u.OUTPUTS == ("z", "denominator_clamped")


def test_defaults_are_deit_tiny_and_derive_the_head_constant():
    cfg = u.Config()
    assert (cfg.d, cfg.n_max, cfg.center_keys) == (64, 197, True)
    p = cfg.params
    assert p.c == pytest.approx(np.sqrt(64) / (cfg.q_scale * cfg.k_scale))
    assert p.c_d == round(p.c * 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d = 32


def test_golden_outputs_have_the_contract_shapes():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=1, h=3, n=10)
    out = u.golden(cfg, **inp)
    assert out["z"].shape == (3, 10, cfg.d) and out["z"].dtype == np.int8
    assert out["denominator_clamped"].shape == (3, 10)
    assert out["denominator_clamped"].dtype == bool


@pytest.mark.parametrize("kwargs,field", [
    (dict(d=0), "d"), (dict(n_max=257), "n_max"), (dict(rows=0), "rows"),
    (dict(cols=65), "cols"), (dict(div_lanes=0), "div_lanes"), (dict(g_shift=25), "g_shift"),
    (dict(rows=2.5), "rows"), (dict(center_keys="yes"), "center_keys"),
    (dict(constant_td=1), "constant_td"),
    (dict(q_scale=0.0), "q_scale"), (dict(k_scale=-0.5), "k_scale"),
    (dict(v_scale=float("inf")), "v_scale"), (dict(out_scale=1e-30), "out_scale"),
    (dict(q_scale=1.0, k_scale=1.0), "q_scale"), (dict(q_scale=1e-4, k_scale=1e-4), "k_scale"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"Config\.{field}"):
        u.Config(**kwargs)


def test_bad_inputs_name_the_problem():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=0, h=1, n=8)
    q, k, v = inp["q"], inp["k"], inp["v"]
    with pytest.raises(ValueError, match="exceeds Config.n_max"):
        big = u.random_inputs(cfg, seed=0, h=1, n=cfg.n_max + 1)
        u.golden(cfg, **big)
    with pytest.raises(ValueError, match="same shape"):
        u.golden(cfg, q=q, k=k[:, :5], v=v)
    with pytest.raises(ValueError, match="Config.d"):
        u.golden(cfg, q=q[..., :8], k=k[..., :8], v=v[..., :8])
    with pytest.raises(TypeError, match="q: expected an integer array"):
        u.golden(cfg, q=q.astype(np.float32), k=k, v=v)
    with pytest.raises(ValueError, match="v: values must fit signed 8-bit"):
        u.golden(cfg, q=q, k=k, v=v.astype(np.int16) * 4)
    with pytest.raises(ValueError, match="k: expected 3 dimensions"):
        u.golden(cfg, q=q, k=k[0], v=v)
    with pytest.raises(ValueError, match="n .tokens. must be >= 1"):
        u.golden(cfg, q=q[:, :0], k=k[:, :0], v=v[:, :0])
    # the driver checks the same way before simulating
    with pytest.raises(ValueError, match="same shape"):
        u.simulate(cfg, q=q, k=k[:, :5], v=v)


def test_any_integer_dtype_that_fits_is_accepted():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=2, h=1, n=6)
    wide = {name: a.astype(np.int32) for name, a in inp.items()}
    assert u.compare(u.golden(cfg, **inp), u.golden(cfg, **wide)) == []


def test_board_configs():
    cfg = u.board_config("ulx3s")
    assert (cfg.d, cfg.n_max) == (64, 197)
    small = u.board_config("icebreaker")
    assert small.constant_td and small.rows * small.cols == 1
    with pytest.raises(ValueError, match="unknown board"):
        u.board_config("de10")


# --- RTL through cocotb + Verilator -------------------------------------------------------------

@needs_verilator
def test_verilator_matches_golden_small():
    """A small core (builds in ~20 s, cached under build/sim afterwards): bit-exact with random
    stalls, and without stalls the same cycle count as the Amaranth simulator."""
    cfg = u.Config(d=4, n_max=4, rows=1, cols=1, div_lanes=1, g_shift=4)
    inp = u.random_inputs(cfg, seed=1, h=2, n=4)
    got, stats = u.simulate(cfg, **inp, simulator="verilator", stalls=3)
    assert u.compare(u.golden(cfg, **inp), got) == []
    assert stats["error_flag"] == 0
    _, free = u.simulate(cfg, **inp, simulator="verilator", stalls=False)
    _, free_amaranth = u.simulate(cfg, **inp, simulator="amaranth", stalls=False)
    assert free["cycles"] == free_amaranth["cycles"]


@pytest.mark.slow
@needs_verilator
@pytest.mark.parametrize("kwargs,h,n", [
    (dict(), 1, 197),                                                   # DeiT-Tiny head, 8 x 8
    (dict(n_max=32), 2, 2),                                             # d = 64, n = 2
    (dict(d=24, n_max=40, rows=4, cols=6, div_lanes=4, g_shift=6, constant_td=True), 2, 40),
    (dict(d=10, n_max=9, rows=3, cols=4, div_lanes=4, g_shift=5), 2, 7),
])
def test_verilator_matches_golden(kwargs, h, n):
    cfg = u.Config(**kwargs)
    inp = u.random_inputs(cfg, seed=n, h=h, n=n)
    got, _ = u.simulate(cfg, **inp, simulator="verilator", stalls=n + 1)
    assert u.compare(u.golden(cfg, **inp), got) == []


@pytest.mark.slow
@needs_verilator
def test_verilator_flags_and_clamps_negative_denominators():
    cfg = u.Config(d=16, n_max=12, rows=4, cols=4, div_lanes=4, center_keys=False,
                   q_scale=1 / 16, k_scale=1 / 16, g_shift=5)
    rng = np.random.default_rng(3)
    k = np.clip(rng.normal(60, 10, (2, 12, 16)), -128, 127).astype(np.int8)
    q = np.clip(rng.normal(0, 60, (2, 12, 16)), -128, 127).astype(np.int8)
    v = np.clip(rng.normal(0, 40, (2, 12, 16)), -128, 127).astype(np.int8)
    want = u.golden(cfg, q=q, k=k, v=v)
    assert want["denominator_clamped"].any()
    got, _ = u.simulate(cfg, q=q, k=k, v=v, simulator="verilator", stalls=5)
    assert u.compare(want, got) == []
