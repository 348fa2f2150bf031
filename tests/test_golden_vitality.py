"""ViTALiTy golden models: integer model vs float Taylor (stated bound), Taylor vs softmax, flags."""
import math

import numpy as np
import pytest

from vitaccel.golden import vitality as gv


def _gauss(rng, shape, sigma):
    return np.clip(np.rint(rng.normal(0, sigma, shape)), -128, 127).astype(np.int8)


def _data(seed, h, n, d, sigma_qk=16, sigma_v=40):
    rng = np.random.default_rng(seed)
    return _gauss(rng, (h, n, d), sigma_qk), _gauss(rng, (h, n, d), sigma_qk), \
        _gauss(rng, (h, n, d), sigma_v)


SCALES = dict(q_scale=1 / 64, k_scale=1 / 64, v_scale=1 / 64, out_scale=1 / 256)


def _params(d, n_max=256, g_shift=7, **kw):
    args = dict(SCALES)
    args.update(kw)
    return gv.derive_params(d, n_max, args.pop("q_scale"), args.pop("k_scale"),
                            args.pop("v_scale"), args.pop("out_scale"), g_shift, **args)


@pytest.mark.parametrize("n,d,g_shift,constant_td", [
    (197, 64, 7, False), (197, 64, 7, True), (2, 64, 7, False), (64, 16, 5, False),
    (100, 32, 6, True), (197, 48, 7, False)])
def test_integer_model_within_one_lsb_of_float_taylor(n, d, g_shift, constant_td):
    """The stated bound: |z_int - z_float / s_out| <= 1 LSB for >= 99 % of outputs (the float
    Taylor reference saturated to int8 like the hardware), and never more than 2 LSB."""
    q, k, v = _data(n * d + g_shift, 3, n, d)
    p = _params(d, g_shift=g_shift, constant_td=constant_td)
    got = gv.taylor_int(q, k, v, p)
    s = SCALES
    zf, den = gv.taylor_attention(q * s["q_scale"], k * s["k_scale"], v * s["v_scale"])
    assert (den > 0).all()
    err = np.abs(got["z"] - np.clip(zf / s["out_scale"], -128, 127))
    assert (err <= 1).mean() >= 0.99
    assert err.max() <= 2
    assert not got["denominator_clamped"].any()


def test_taylor_matches_softmax_for_small_scores():
    """Sanity of the float reference: for small scores exp(x) ~ 1 + x, so Taylor ~ softmax."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(0, 0.2, (2, 50, 16)) for _ in range(3))
    zt, _ = gv.taylor_attention(q, k, v)
    zs = gv.softmax_attention(q, k, v)
    assert np.abs(zt - zs).max() < 0.01 * np.abs(v).max()
    # and for large scores it is not (the reference is not trivially identical)
    zt2, _ = gv.taylor_attention(q * 20, k * 20, v)
    assert np.abs(zt2 - gv.softmax_attention(q * 20, k * 20, v)).max() > 0.1


def test_centring_leaves_exact_taylor_denominator_constant():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(0, 1, (40, 8)) for _ in range(3))
    _, den = gv.taylor_attention(q, k, v, center_keys=True)
    assert np.allclose(den, 40 * math.sqrt(8))


def test_trace_steps_are_consistent():
    """The six steps as the spec writes them: centring residue small, t_D near n c_D."""
    n, d = 150, 32
    q, k, v = _data(5, 1, n, d)
    p = _params(d)
    t = gv.taylor_int_head(q[0], k[0], v[0], p, trace=True)
    assert (np.abs(t["khat_sum"]) <= n // 2 + 1).all()            # k^_sum ~ 0 (residue)
    assert np.array_equal(t["khat"], (k[0].astype(np.int64) << gv.KBAR_FRAC) - t["kbar"])
    assert np.array_equal(t["g"], t["khat"].T @ v[0].astype(np.int64))
    assert np.abs(t["td"] / (n * p.c_d) - 1).max() < 1e-3
    assert t["g_saturated"] == 0
    assert np.abs(t["khat"]).max() < 2 ** (p.khat_bits - 1)
    assert np.abs(t["g"]).max() < 2 ** 31


def test_no_centring_forces_clamped_denominators():
    """The ablation: without centring and with a strong common key direction, 1 + x goes
    negative and t_D <= 0 happens; those rows are flagged and clamped (outputs saturate)."""
    rng = np.random.default_rng(3)
    n, d = 32, 16
    k = np.clip(rng.normal(60, 10, (1, n, d)), -128, 127).astype(np.int8)    # shared key mean
    q = np.clip(rng.normal(0, 60, (1, n, d)), -128, 127).astype(np.int8)
    v = _gauss(rng, (1, n, d), 40)
    p = _params(d, center_keys=False, q_scale=1 / 16, k_scale=1 / 16, g_shift=5)
    t = gv.taylor_int_head(q[0], k[0], v[0], p, trace=True)
    clamped = t["td"] <= 0
    assert 0 < clamped.sum() < n
    out = gv.taylor_int(q, k, v, p)
    assert np.array_equal(out["denominator_clamped"][0], clamped)
    assert (np.isin(out["z"][0][clamped], (-128, 0, 127))).all()
    # the same data with centring: no clamps
    pc = _params(d, center_keys=True, q_scale=1 / 16, k_scale=1 / 16, g_shift=5)
    assert not gv.taylor_int(q, k, v, pc)["denominator_clamped"].any()


@pytest.mark.parametrize("kw,field", [
    (dict(q_scale=0.0), "q_scale"), (dict(k_scale=-1.0), "k_scale"),
    (dict(v_scale=float("nan")), "v_scale"), (dict(out_scale=1e-30), "out_scale"),
    (dict(q_scale=1.0, k_scale=1.0), "q_scale"),             # c too small for the numerator
    (dict(q_scale=1e-4, k_scale=1e-4), "k_scale")])           # c so large T_N overflows
def test_scale_constants_out_of_range(kw, field):
    with pytest.raises(ValueError, match=field):
        _params(64, **kw)


def test_cost_model_numbers():
    assert gv.softmax_macs(197, 64) == 4_967_552
    assert gv.taylor_macs(197, 64) == 1_626_432
