"""FACT golden model: LO operands, the integer predictor against exact/float references with a
stated error bound, and the decision rules (top-k ties, one-hot, keep_kv, importance).

The error bound (tested below): ``LO_m(a) = alpha * a`` with ``alpha`` in ``(r_m, 1]``,
``r_m = 2**m / (2**m + 1)``, so one LO product is within ``(1 - r_m**2) |a b|`` of ``a b`` and

  |Q~ - Q| <= (1 - r^2) |X| |W|                               (no saturation)
  |A~ - A| <= sum_c (1 - r^2)|Q~_c||K~_c| + |Q~_c - Q_c||K~_c| + |Q_c||K~_c - K_c|

and for non-negative data without bias ``r^4 A < A~ <= A`` element by element.
"""
import math

import numpy as np
import pytest

from vitaccel.golden import fact as g
from vitaccel.golden.fixedpoint import saturate


def brute_lo(a, m):
    if a == 0:
        return 0
    e = abs(a).bit_length() - 1
    s = max(e - m, 0)
    return int(np.sign(a)) * ((abs(a) >> s) << s)


def ratio(m):
    return 2**m / (2**m + 1)


@pytest.mark.parametrize("m", [0, 1, 2, 3])
def test_lo_matches_definition_on_all_int8_and_wide_values(m):
    rng = np.random.default_rng(m)
    values = np.concatenate([np.arange(-128, 128), rng.integers(-2**30, 2**30, 2000),
                             [-(2**31), 2**31 - 1, -(2**23), 2**23 - 1]])
    got = g.lo(values, m)
    assert got.tolist() == [brute_lo(int(v), m) for v in values]
    sign, shift, mant = g.lo_code(values, m)
    assert (mant < 2 ** (m + 1)).all()
    assert np.array_equal(np.where(sign, -(mant << shift), mant << shift), got)
    nz = values != 0
    assert (np.abs(got[nz]) <= np.abs(values[nz])).all()
    assert (np.abs(got[nz]) > ratio(m) * np.abs(values[nz])).all()


def test_lo_fact_examples():
    assert g.lo([0, 1, 3, 5, 7, -7, 127, -128, -1], 0).tolist() == [0, 1, 2, 4, 4, -4, 64, -128, -1]
    assert g.lo([7, 127, -100], 1).tolist() == [6, 96, -96]


def rand_case(seed, n=13, dm=24, bias=True):
    rng = np.random.default_rng(seed)
    out = {"x": rng.integers(-128, 128, (n, dm)), "wq": rng.integers(-128, 128, (dm, dm)),
           "wk": rng.integers(-128, 128, (dm, dm))}
    if bias:
        out["bq"] = rng.integers(-2**18, 2**18, dm)
        out["bk"] = rng.integers(-2**18, 2**18, dm)
    return out


@pytest.mark.parametrize("m", [0, 1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_projection_and_score_error_bound(m, seed):
    inp = rand_case(seed)
    heads = 3
    q, k = g.projections_exact(**inp)
    qt, kt = g.projections(**inp, mantissa_bits=m)
    r2 = ratio(m) ** 2
    x, wq, wk = (np.abs(inp[n]) for n in ("x", "wq", "wk"))
    assert (np.abs(qt - q) <= (1 - r2) * (x @ wq)).all()
    assert (np.abs(kt - k) <= (1 - r2) * (x @ wk)).all()
    a_exact = g.exact_scores(**inp, heads=heads).astype(np.float64)
    a_pred = g.predicted_scores(qt, kt, heads, mantissa_bits=m).astype(np.float64)
    split = lambda a: np.abs(a.reshape(a.shape[0], heads, -1).transpose(1, 0, 2)).astype(float)
    Qa, Qt, Kt = split(q), split(qt), split(kt)
    dQ, dK = split(qt - q), split(kt - k)
    bound = (1 - r2) * Qt @ Kt.transpose(0, 2, 1) + dQ @ Kt.transpose(0, 2, 1) \
        + Qa @ dK.transpose(0, 2, 1)
    assert (np.abs(a_pred - a_exact) <= bound * (1 + 1e-12)).all()
    # the bound is not vacuous: the prediction is far from exact somewhere for m = 0
    if m == 0:
        assert np.abs(a_pred - a_exact).max() > 0


@pytest.mark.parametrize("m", [0, 1, 2])
def test_nonnegative_data_is_bracketed(m):
    rng = np.random.default_rng(10 + m)
    x, wq, wk = rng.integers(1, 128, (9, 16)), rng.integers(1, 128, (16, 16)), rng.integers(1, 128, (16, 16))
    a = g.exact_scores(x, wq, wk, heads=2).astype(float)
    qt, kt = g.projections(x, wq, wk, mantissa_bits=m)
    at = g.predicted_scores(qt, kt, 2, mantissa_bits=m).astype(float)
    assert (at <= a).all() and (at > ratio(m) ** 4 * a).all()


def test_float_reference_agrees_with_exact_integers_and_threshold():
    inp = rand_case(3)
    sx, sq, sk = 1 / 16, 1 / 256, 1 / 128
    f = g.float_scores(**inp, heads=3, x_scale=sx, wq_scale=sq, wk_scale=sk)
    d = 8
    exact = g.exact_scores(**inp, heads=3).astype(float) * (sx * sq) * (sx * sk) / math.sqrt(d)
    assert np.allclose(f, exact, rtol=1e-12, atol=1e-9)
    # T_int in score units is t logits
    t = g.threshold_int(3.0, d, sx, sq, sk)
    assert abs(t * (sx * sq) * (sx * sk) / math.sqrt(d) - 3.0) < 1e-6
    p = g.float_attention(**inp, heads=3, x_scale=sx, wq_scale=sq, wk_scale=sk)
    assert np.allclose(p.sum(-1), 1.0)


def test_saturation_of_wide_projection():
    x = np.full((2, 4), -128)
    w = np.full((4, 4), -128)
    b = np.full(4, 2**31 - 1)
    qt, kt = g.projections(x, w, w, b, -b - 1, qk_bits=24)
    assert (qt == 2**23 - 1).all() and (kt == -(2**23)).all()
    assert np.array_equal(qt, saturate(x @ w + b, 24))


def brute_decisions(scores, k, t_int, thr):
    h, n, _ = scores.shape
    select = np.zeros(scores.shape, bool)
    onehot = np.zeros((h, n), bool)
    argmax = np.zeros((h, n), int)
    keep = np.zeros((h, n), bool)
    imp = np.zeros(n, int)
    for a in range(h):
        for i in range(n):
            order = sorted(range(n), key=lambda j: (-int(scores[a, i, j]), j))
            select[a, i, order[:k]] = True
            argmax[a, i] = order[0]
            onehot[a, i] = n == 1 or scores[a, i, order[0]] - scores[a, i, order[1]] > t_int
            for j in ([order[0]] if onehot[a, i] else order[:k]):
                keep[a, j] = True
                imp[j] += 1
    return select, onehot, argmax, keep, imp, imp >= thr


@pytest.mark.parametrize("seed,k,t_int", [(0, 1, 0), (1, 3, 5), (2, 7, 0), (3, 2, 100)])
def test_decisions_match_brute_force_with_ties(seed, k, t_int):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-20, 20, (2, 7, 7))          # many ties
    got = g.decisions(scores, k, t_int, 4)
    want = brute_decisions(scores, k, t_int, 4)
    for name, w in zip(("select", "onehot", "argmax", "keep_kv", "importance", "high_precision"), want):
        assert np.array_equal(got[name], w), name


def test_all_zero_rows_and_single_token():
    got = g.decisions(np.zeros((1, 5, 5), np.int64), 2, 0, 1)
    assert (got["select"][0, :, :2]).all() and not got["select"][0, :, 2:].any()
    assert (got["argmax"] == 0).all() and not got["onehot"].any()
    one = g.decisions(np.full((2, 1, 1), 7), 1, 0, 2)
    assert one["onehot"].all() and one["importance"].tolist() == [2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="mantissa_bits"):
        g.lo([1], 4)
    with pytest.raises(ValueError, match="k must be in"):
        g.row_topk(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="wq"):
        g.projections(np.zeros((2, 4), int), np.zeros((4, 3), int), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="heads"):
        g.predicted_scores(np.zeros((2, 4), int), np.zeros((2, 4), int), 3)
    with pytest.raises(ValueError, match="exact_operand"):
        g.predict(*rand_case(0, bias=False).values(), heads=1, k=1, t_int=0,
                  importance_threshold=0, exact_operand="w")


def test_hit_rate_metric():
    s = np.array([[[5, 4, 3, 2]]])
    assert g.topk_hit_rate(s, s, 2) == 1.0
    assert g.topk_hit_rate(s, -s, 2) == 0.0
    assert g.topk_hit_rate(s, np.array([[[5, 1, 3, 2]]]), 2) == 0.5


@pytest.mark.parametrize("m,floor", [(0, 0.87), (1, 0.91), (2, 0.93)])
def test_structured_hit_rate_against_int8_attention(m, floor):
    """Measured on the unit's structured data (N = 64, D = 64, 2 heads, k = 20 % of N); the
    floors sit a little under the measured rates (0.880, 0.922, 0.944) so that a regression in
    the model fails."""
    from vitaccel import units
    u = units.get("fact")
    inp = u.structured_inputs(64, 64, seed=4)
    pred = g.predict(**inp, heads=2, k=13, t_int=0, importance_threshold=0, mantissa_bits=m,
                     with_scores=True)["scores"]
    rate = g.topk_hit_rate(pred, g.int8_scores(**inp, heads=2), 13)
    assert rate >= floor
