"""HeatViT unit: the selector RTL == the integer golden model, bit for bit on tokens_out, keep and
n_next, under seeded random stalls: every case in the Amaranth simulator; through cocotb +
Verilator a tiny config (not slow: its model builds fast and is cached), and the SMALL scenario
sweep, per-head weights and the DeiT-T shape at N = 196 (slow)."""
import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import heatvit as G

u = units.get("heatvit")
SMALL = u.Config(D=32, heads=2, n_max=8, mac_rows=2, mac_cols=4)
TINY = u.Config(D=16, heads=2, n_max=4, mac_rows=2, mac_cols=2)


def _biased(cfg, seed, bias):
    w = G.random_weights(cfg, seed)
    b4 = np.zeros_like(w.b4)
    b4[..., 0] = bias
    return G.Weights(**{**w.__dict__, "b4": b4})


def _check(cfg, seed, simulator="amaranth", **inp):
    want = u.golden(cfg, **inp)
    got, stats = u.simulate(cfg, **inp, simulator=simulator, stalls=seed)
    assert u.compare(want, got) == []
    return want, stats


@pytest.mark.parametrize("seed,n", [(1, 5), (2, 8), (3, 2)])
def test_mixed_random(seed, n):
    inp = u.random_inputs(SMALL, seed, n=n)
    _check(SMALL, seed, **inp)


def test_all_kept_all_pruned_and_zero_denominator():
    tok = u.random_tokens(SMALL, 4, n=4)
    want, _ = _check(SMALL, 4, tokens=tok, weights=_biased(SMALL, 4, 2 ** 24))
    assert want["keep"].all()
    # huge negative logits: every token dropped with keep score 0 -> plain-mean package
    want, _ = _check(SMALL, 5, tokens=tok, weights=_biased(SMALL, 4, -(2 ** 24)))
    assert not want["keep"].any() and want["n_next"] == 2


def test_exact_tie_and_incoming_package():
    w = G.random_weights(SMALL, 6)
    tie = G.Weights(**{**w.__dict__, "w4": np.zeros_like(w.w4), "b4": np.zeros_like(w.b4)})
    want, _ = _check(SMALL, 6, tokens=u.random_tokens(SMALL, 6, n=3), weights=tie)
    assert not want["keep"].any()
    inp = u.random_inputs(SMALL, 7, n=6)
    want, _ = _check(SMALL, 7, **{**inp, "has_package": True})
    assert not want["keep"][-1]


@pytest.mark.parametrize("changes", [dict(shared_weights=False), dict(decision="prob"),
                                     dict(normalize_package=False), dict(sigmoid="hard"),
                                     dict(D=48, heads=3, mac_rows=3, mac_cols=2)],
                         ids=["per_head", "prob", "no_norm", "hard_sigmoid", "D48h3"])
def test_options(changes):
    cfg = u.Config(**{**SMALL.__dict__, **changes})
    inp = u.random_inputs(cfg, 8, n=6)
    _check(cfg, 9, **inp)


def test_stats_and_macs_per_token():
    assert u.macs_per_token(u.Config())["spec"] == 20070
    inp = u.random_inputs(SMALL, 10, n=8)
    _, stats = u.simulate(SMALL, **inp, stalls=False)
    assert 0 < stats["mac_utilisation"] <= 1 and stats["cycles"] > stats["gemm_cycles"]
    phases = stats["phases"]
    assert sum(phases.values()) == stats["outside_mac_cycles"]
    assert all(v > 0 for v in phases.values()), phases
    assert phases["load"] >= 9 * SMALL.D            # tokens arrive one byte per beat


def test_board_configs():
    assert u.board_config("ulx3s") == u.Config()          # the DeiT-T default fits the ECP5-85F
    with pytest.raises(ValueError, match="iCE40UP5K"):
        u.board_config("icebreaker")
    with pytest.raises(ValueError, match="unknown board"):
        u.board_config("arty")


def test_demo_config_runs():
    cfg = u.demo_config()
    _check(cfg, 11, **u.random_inputs(cfg, 11))


def test_verilator_tiny_config():
    """cocotb + Verilator, stalls on: a mixed image and an incoming package on one small model."""
    pytest.importorskip("cocotb")
    inp = u.random_inputs(TINY, 12, n=4)
    _check(TINY, 12, "verilator", **inp)
    _check(TINY, 13, "verilator", **{**u.random_inputs(TINY, 13, n=3), "has_package": True})


@pytest.mark.slow
def test_verilator_scenarios():
    """The Amaranth-simulator scenarios again through Verilator (one model for all of them)."""
    pytest.importorskip("cocotb")
    for seed, n in ((1, 5), (2, 8), (3, 2), (14, 1)):
        _check(SMALL, seed, "verilator", **u.random_inputs(SMALL, seed, n=n))
    tok = u.random_tokens(SMALL, 4, n=4)
    want, _ = _check(SMALL, 4, "verilator", tokens=tok, weights=_biased(SMALL, 4, 2 ** 24))
    assert want["keep"].all()
    want, _ = _check(SMALL, 5, "verilator", tokens=tok, weights=_biased(SMALL, 4, -(2 ** 24)))
    assert not want["keep"].any() and want["n_next"] == 2
    w = G.random_weights(SMALL, 6)
    tie = G.Weights(**{**w.__dict__, "w4": np.zeros_like(w.w4), "b4": np.zeros_like(w.b4)})
    want, _ = _check(SMALL, 6, "verilator", tokens=u.random_tokens(SMALL, 6, n=3), weights=tie)
    assert not want["keep"].any()
    inp = u.random_inputs(SMALL, 7, n=6)
    want, _ = _check(SMALL, 7, "verilator", **{**inp, "has_package": True})
    assert not want["keep"][-1]


@pytest.mark.slow
@pytest.mark.parametrize("changes", [dict(shared_weights=False),
                                     dict(D=48, heads=3, mac_rows=3, mac_cols=2)],
                         ids=["per_head", "D48h3"])
def test_verilator_options(changes):
    pytest.importorskip("cocotb")
    cfg = u.Config(**{**SMALL.__dict__, **changes})
    _check(cfg, 15, "verilator", **u.random_inputs(cfg, 15, n=7))


@pytest.mark.slow
def test_verilator_deit_t_n196():
    """The DeiT-T default (D = 192, h = 3, 8 x 8 array) at N = n_max = 196, stalls on."""
    pytest.importorskip("cocotb")
    cfg = u.Config()
    inp = u.random_inputs(cfg, 0)
    want, stats = _check(cfg, 16, "verilator", **inp)
    assert 0 < want["keep"].sum() < cfg.n_max      # a mixed image (about 30 % kept)
    assert stats["mac_utilisation"] >= 0.8
