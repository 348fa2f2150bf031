"""HeatViT golden model: integer blocks against exact float math with stated bounds, the integer
selector against the float reference (decision agreement, package error), structured cases,
weights I/O and input validation."""
import math

import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import heatvit as G
from vitaccel.golden.fixedpoint import quantize_multiplier

u = units.get("heatvit")
DEIT_T = u.Config()
SMALL = u.Config(D=64, heads=2, n_max=24)


# --- blocks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("out_scale", [1 / 16, 1 / 32])
def test_gelu_q_error_bound(out_scale):
    """|GELU_q - GELU| <= 0.019 (I-BERT's erf polynomial) + out_scale/2 + input rounding, over
    the inputs whose GELU the int8 output can represent."""
    acc = np.arange(-60000, int(127 * out_scale * 1e4), 3)
    s_acc = 1e-4
    a, one = round(G.GELU_A * 2 ** 14), 2 ** 14
    out = G.gelu_q(acc, quantize_multiplier(s_acc * 2 ** 10),
                   quantize_multiplier(2 ** -25 / out_scale), a, one)
    err = np.abs(out * out_scale - G.gelu_float(acc * s_acc))
    assert err.max() <= 0.019 + out_scale / 2 + 2 ** -10


def test_gelu_delta_half_halves_the_erf_term():
    acc = np.arange(-4000, 4000, 5)
    rq_in = quantize_multiplier(1e-3 * 2 ** 10)
    rq_out = quantize_multiplier(2 ** -25 * 32)
    half = G.gelu_q(acc, rq_in, rq_out, round(0.5 * G.GELU_A * 2 ** 14), 2 ** 13)
    x = acc * 1e-3
    want = 0.5 * x * (1 + 0.5 * np.vectorize(math.erf)(x / math.sqrt(2)))
    assert np.abs(half / 32 - want).max() <= 0.5 * 0.019 + 1 / 64 + 2 ** -10


def test_plan_sigmoid_error_and_shape():
    x = np.arange(-3000, 3000)
    y = G.sigmoid_q(x)
    assert np.abs(y / 256 - 1 / (1 + np.exp(-x / 256))).max() <= 0.0205   # PLAN: 0.0189 + LSB
    assert y.min() == 0 and y.max() == 256
    # PLAN's published segments meet with a step down at |x| = 2.375 (0.92188 -> 0.91797): one
    # Q8 LSB, the only place it is not monotone
    assert np.all(np.diff(y) >= -1) and np.sum(np.diff(y) < 0) == 2
    assert np.all(G.sigmoid_q(-x[1:]) == 256 - G.sigmoid_q(x[1:]))        # odd symmetry
    h = G.sigmoid_q(x, "hard")
    assert h.min() == 0 and h.max() == 256 and np.all(np.diff(h) >= 0)


def test_inverse_sqrt_is_floor_of_exact():
    v = np.array([1, 2, 3, 7, 100, 12345, 2 ** 20 + 1, 2 ** 27, 2 ** 28 - 1])
    r = G.inv_sqrt(v)
    exact = 2 ** G.LN_R / np.sqrt(v.astype(np.float64))
    assert np.all(np.abs(r - exact) <= 1.0)


def test_layernorm_q_within_half_lsb_plus_rsqrt_error():
    cfg = DEIT_T
    x = u.random_tokens(cfg, 1).astype(np.int64)[1:]
    p = G.derive(cfg, G.random_weights(cfg, 0))
    y, s, _ = G.layernorm_q(x, cfg.d, p.ln_eps_int)
    xf = x.reshape(-1, cfg.heads, cfg.d) * cfg.x_scale
    ln = (xf - xf.mean(-1, keepdims=True)) / np.sqrt(xf.var(-1, keepdims=True) + cfg.ln_eps)
    assert np.abs(y.reshape(xf.shape) - ln * 2 ** G.LN_Y).max() <= 0.52   # Q4 LSBs
    assert np.array_equal(s, x.reshape(-1, cfg.heads, cfg.d).sum(-1))


# --- whole selector vs float ----------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [DEIT_T, u.Config(shared_weights=False), u.Config(decision="prob"),
                                 SMALL], ids=["deit_t", "per_head", "prob_rule", "D64h2"])
def test_decisions_agree_with_float_reference(cfg):
    """Random inputs: >= 97 % of keep decisions agree; every disagreement is a near-tie (|float
    margin| below 0.25 of the margin's spread); kept tokens are copied exactly; with equal masks
    the package is within 2 LSB of the float package."""
    agree, total = 0, 0
    for seed in range(4):
        inp = u.random_inputs(cfg, seed, n=min(cfg.n_max, 100))
        g = u.golden(cfg, **inp)
        f = u.float_reference(cfg, **inp)
        diff = g["keep"] != f["keep"]
        agree += int((~diff).sum())
        total += diff.size
        spread = np.std(f["margin"])
        assert np.all(np.abs(f["margin"][diff]) < 0.25 * spread)
        kept = inp["tokens"][1:][g["keep"]]
        assert np.array_equal(g["tokens_out"][1:1 + len(kept)], kept)
        assert np.array_equal(g["tokens_out"][0], inp["tokens"][0])
        if not diff.any() and (~g["keep"]).any():
            assert np.abs(g["tokens_out"][-1] - f["tokens_out"][-1] / cfg.x_scale).max() <= 2.0
    assert agree / total >= 0.97


def _biased(cfg, seed, bias):
    """Weights whose logit bias b4 = (bias, 0): large positive keeps all, negative drops all."""
    w = G.random_weights(cfg, seed)
    b4 = np.zeros_like(w.b4)
    b4[..., 0] = bias
    return G.Weights(**{**w.__dict__, "b4": b4})


def test_all_kept_has_no_package():
    w = _biased(SMALL, 1, 2 ** 24)
    tok = u.random_tokens(SMALL, 2, n=10)
    g = u.golden(SMALL, tokens=tok, weights=w)
    assert g["keep"].all() and g["n_next"] == 11 and np.array_equal(g["tokens_out"], tok)


def test_all_pruned_gives_cls_and_package():
    w = _biased(SMALL, 1, -(2 ** 24))
    tok = u.random_tokens(SMALL, 2, n=10)
    g = u.golden(SMALL, tokens=tok, weights=w)
    assert not g["keep"].any() and g["n_next"] == 2 and g["tokens_out"].shape == (2, SMALL.D)


def test_zero_package_denominator_is_plain_mean():
    """Every dropped token has keep score 0 (huge negative logits): the package is the plain mean."""
    w = _biased(SMALL, 1, -(2 ** 24))
    tok = u.random_tokens(SMALL, 3, n=7)
    g = u.golden(SMALL, tokens=tok, weights=w)
    mean = tok[1:].astype(np.int64).sum(0)
    r = (2 ** 24 * 2 + 7) // 14                       # reciprocal(7, 24), RHU
    want = np.clip((mean * r + 2 ** 23) >> 24, -128, 127)
    assert np.array_equal(g["tokens_out"][-1], want)


def test_exact_tie_is_dropped_under_logit_rule():
    """z0 == z1 for every head (all-zero last layer): sum w*dz = 0 is not > 0, so all dropped."""
    w = G.random_weights(SMALL, 4)
    w = G.Weights(**{**w.__dict__, "w4": np.zeros_like(w.w4), "b4": np.zeros_like(w.b4)})
    g = u.golden(SMALL, tokens=u.random_tokens(SMALL, 5, n=6), weights=w)
    assert not g["keep"].any()
    # the probability rule keeps a tie (p = 0.5 >= 0.5)
    cfg = u.Config(D=64, heads=2, n_max=24, decision="prob")
    g = u.golden(cfg, tokens=u.random_tokens(cfg, 5, n=6), weights=w)
    assert g["keep"].all()


def test_incoming_package_is_packed_again():
    w = _biased(SMALL, 1, 2 ** 24)               # would keep everything
    tok = u.random_tokens(SMALL, 6, n=5)
    g = u.golden(SMALL, tokens=tok, weights=w, has_package=True)
    assert list(g["keep"]) == [True] * 4 + [False] and g["n_next"] == 6
    assert np.array_equal(g["tokens_out"][-1], tok[-1])   # a lone package re-packs to itself


def test_package_without_normalisation_is_weighted_sum():
    cfg = u.Config(D=64, heads=2, n_max=24, normalize_package=False)
    inp = u.random_inputs(cfg, 8, n=12)
    trace = {}
    G.selector_int(G.derive(cfg, inp["weights"]), inp["weights"], inp["tokens"].astype(np.int64),
                   False, trace)
    g = u.golden(cfg, **inp)
    assert np.array_equal(g["tokens_out"][-1], np.clip((trace["pkg_acc"] + 128) >> 8, -128, 127))


def test_n_equals_two_and_n_max():
    for n in (2, SMALL.n_max):
        inp = u.random_inputs(SMALL, n, n=n)
        g = u.golden(SMALL, **inp)
        assert g["keep"].shape == (n,)
        assert g["n_next"] == 1 + g["keep"].sum() + (not g["keep"].all())


# --- weights ------------------------------------------------------------------------------------
def test_save_load_roundtrip(tmp_path):
    w = G.random_weights(SMALL, 3)
    G.save_weights(tmp_path / "w.npz", w)
    w2 = u.load_weights(tmp_path / "w.npz", SMALL)
    inp = u.random_tokens(SMALL, 1, n=9)
    assert u.compare(u.golden(SMALL, tokens=inp, weights=w), u.golden(SMALL, tokens=inp, weights=w2)) == []


def _state_dict(cfg, rng, prefix="score_predictor.1."):
    h, d = cfg.heads, cfg.d
    sd = {"senet.0.weight": rng.normal(0, .5, (h // 2, h)), "senet.0.bias": rng.normal(0, .1, h // 2),
          "senet.2.weight": rng.normal(0, .5, (h, h // 2)), "senet.2.bias": rng.normal(0, .1, h)}
    for i in range(h):
        sd[f"in_conv.{i}.0.weight"] = 1 + 0.1 * rng.normal(size=d)
        sd[f"in_conv.{i}.0.bias"] = 0.1 * rng.normal(size=d)
        for k, (o, n) in {"in_conv.{i}.1": (d, d), "out_conv.{i}.0": (d // 2, d),
                          "out_conv.{i}.2": (d // 4, d // 2), "out_conv.{i}.4": (2, d // 4)}.items():
            sd[k.format(i=i) + ".weight"] = rng.normal(0, 2 / math.sqrt(n), (o, n))
            sd[k.format(i=i) + ".bias"] = rng.normal(0, .1, o)
    return {prefix + k: v for k, v in sd.items()}


def test_from_state_dict_quantises_and_folds_layernorm():
    cfg = u.Config(D=64, heads=2, n_max=24, shared_weights=False)
    sd = _state_dict(cfg, np.random.default_rng(0))
    w = u.from_state_dict(cfg, sd, stage=1)
    assert w.w1.shape == (2, 32, 32) and w.w1.dtype == np.int8 and not w.shared
    w1 = sd["score_predictor.1.in_conv.1.1.weight"] * sd["score_predictor.1.in_conv.1.0.weight"]
    assert np.abs(w.w1[1] * w.w1_scale - w1).max() <= w.w1_scale / 2 + 1e-12
    shared = u.from_state_dict(u.Config(D=64, heads=2, n_max=24), sd, stage=1)
    assert shared.w1.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="state_dict has no"):
        u.from_state_dict(cfg, sd, stage=0)


# --- errors -------------------------------------------------------------------------------------
def test_clear_errors():
    w = G.random_weights(SMALL, 0)
    with pytest.raises(ValueError, match="exceeds Config.n_max"):
        u.golden(SMALL, tokens=np.zeros((26, 64), np.int8), weights=w)
    with pytest.raises(ValueError, match="weights.w1: expected shape"):
        u.golden(DEIT_T, tokens=np.zeros((3, 192), np.int8), weights=w)
    with pytest.raises(ValueError, match=r"weights.w2: expected shape .* \(per-head weights\)"):
        u.golden(u.Config(D=64, heads=2, shared_weights=False), tokens=np.zeros((3, 64), np.int8),
                 weights=G.Weights(**{**w.__dict__, "w1": np.zeros((2, 32, 32), np.int8),
                                      "b1": np.zeros((2, 32), np.int64)}))
    with pytest.raises(ValueError, match="divisible by Config.heads"):
        u.Config(D=100, heads=3)
    with pytest.raises(ValueError, match="power of two"):
        u.Config(D=96, heads=2)
    with pytest.raises(ValueError, match="Config.decision"):
        u.Config(decision="argmax")
    with pytest.raises(ValueError, match="tokens: expected D = 64"):
        u.golden(SMALL, tokens=np.zeros((3, 32), np.int8), weights=w)
    with pytest.raises(ValueError, match="tokens: values must fit"):
        u.golden(SMALL, tokens=np.full((3, 64), 200), weights=w)
