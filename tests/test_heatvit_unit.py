"""HeatViT unit: the selector RTL == the integer golden model, bit for bit on tokens_out, keep and
n_next, under seeded random stalls (Amaranth simulator; one Verilator run)."""
import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import heatvit as G

u = units.get("heatvit")
SMALL = u.Config(D=32, heads=2, n_max=8, mac_rows=2, mac_cols=4)


def _biased(cfg, seed, bias):
    w = G.random_weights(cfg, seed)
    b4 = np.zeros_like(w.b4)
    b4[..., 0] = bias
    return G.Weights(**{**w.__dict__, "b4": b4})


def _check(cfg, seed, **inp):
    want = u.golden(cfg, **inp)
    got, stats = u.simulate(cfg, **inp, simulator="amaranth", stalls=seed)
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


def test_demo_config_runs():
    cfg = u.demo_config()
    _check(cfg, 11, **u.random_inputs(cfg, 11))


@pytest.mark.slow
def test_verilator_bit_exact():
    pytest.importorskip("cocotb")
    inp = u.random_inputs(SMALL, 12, n=7)
    want = u.golden(SMALL, **inp)
    got, _ = u.simulate(SMALL, **inp, simulator="verilator", stalls=12)
    assert u.compare(want, got) == []
