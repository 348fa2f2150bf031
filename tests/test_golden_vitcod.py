"""ViTCoD golden models: mask compiler (toy case, real DeiT-Tiny mask, validation), integer model
against the float reference within the stated bound, exp LUT, auto-encoder, line split."""

import numpy as np
import pytest

from vitaccel.golden import vitcod as gv
from vitaccel.golden.vitcod import REAL_MASK_PATH, load_real_mask, toy_mask

needs_data = pytest.mark.skipif(not REAL_MASK_PATH.exists(),
                                reason=f"real ViTCoD mask missing: {REAL_MASK_PATH}")




def vit_like_mask(n, rng, globals_=(0,), density=0.15):
    """Synthetic ViT-like mask: a few global columns, a diagonal band, random sparse entries."""
    keep = rng.random((n, n)) < density
    keep |= np.eye(n, dtype=bool) | np.eye(n, k=1, dtype=bool)
    keep[0, :] = True
    for g in globals_:
        keep[:, g] = True
    return ~keep


def test_toy_case_by_hand():
    cm = gv.compile_mask(toy_mask(), theta_d=4)
    assert list(cm.glob_idx) == [0, 5]
    assert list(cm.sparse_cols) == [1, 2, 3, 4, 6, 7]
    assert list(cm.col_ptr) == [0, 2, 5, 8, 11, 14, 17]
    assert list(cm.row_idx) == [0, 1, 0, 1, 2, 0, 2, 3, 0, 3, 4, 0, 5, 6, 0, 6, 7]
    assert cm.dense_valid.all()
    # row order: row 0 holds entries of every sparse column, in column order
    assert list(cm.row_ptr[:3]) == [0, 6, 8]
    assert list(cm.entry_col[cm.row_order[:6]]) == [1, 2, 3, 4, 6, 7]
    assert gv.spec_line_split(cm.g, cm.n, cm.nnz, 8) == (3, 5)     # floor(8 * 16 / 33) = 3
    assert cm.split(8) == (2, 6)     # but only G = 2 keys: a third dense line would idle


@needs_data
def test_real_mask_reproduces_readme():
    pruned = load_real_mask()
    g_table = [[1, 10, 1], [1, 1, 1], [70, 1, 1], [1, 1, 1], [1, 1, 1], [20, 3, 1], [17, 1, 1],
               [1, 1, 1], [1, 5, 1], [9, 1, 7], [10, 6, 15], [31, 21, 28]]
    max_sparse = 0
    for layer in range(12):
        for head in range(3):
            cm = gv.compile_mask(pruned[layer, head], theta_d=50)
            assert cm.g == g_table[layer][head], (layer, head)
            assert np.diff(cm.col_ptr).max(initial=0) <= 50
            assert (cm.row_idx[cm.col_ptr[:-1][np.diff(cm.col_ptr) > 0]] == 0).all()  # CLS row
            max_sparse = max(max_sparse, cm.nnz)
    assert max_sparse == 4086
    assert int((~pruned).sum()) == 74399
    cm = gv.compile_mask(pruned[0, 0], theta_d=50)
    assert cm.nnz == 2244 and list(cm.glob_idx) == [0]
    assert list(cm.col_ptr[:8]) == [0, 12, 21, 31, 41, 50, 58, 67]
    assert list(cm.row_idx[:20]) == [0, 1, 2, 3, 4, 5, 15, 16, 17, 29, 30, 43,
                                     0, 1, 2, 3, 4, 15, 16, 17]
    dens = [gv.compile_mask(pruned[L, H], 50).dense_valid.mean() for L in range(12)
            for H in range(3)]
    assert min(dens) == pytest.approx(0.38, abs=0.01)


def test_prune_by_information_keeps_one_extra_and_cls():
    a = np.array([[0.1, 0.6, 0.2, 0.1],
                  [0.0, 0.1, 0.8, 0.1],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.0, 0.0, 0.0, 1.0]])
    pruned = gv.prune_by_information(a, theta_p=0.7)
    keep = ~pruned
    assert keep[0].all()                                   # CLS row forced
    assert keep[:, 0].all()                                # CLS column forced
    assert list(keep[1]) == [True, True, True, False]      # k=1 (0.8) + 1 extra (0.1, first)
    assert list(keep[2]) == [True, True, True, True]       # k=3 + 1 extra
    assert list(keep[3]) == [True, False, False, True]     # k=1 + 1 extra (stable: column 0)


def test_compiler_never_edits_user_mask_g0_and_empty_rows():
    rng = np.random.default_rng(1)
    mask = rng.random((12, 12)) > 0.2
    mask[:, 0] = True               # no CLS column, a row with nothing kept
    mask[3, :] = True
    before = mask.copy()
    cm = gv.compile_mask(mask, theta_d=12)
    assert cm.g == 0 and np.array_equal(mask, before)
    assert cm.split(4) == (0, 4)
    q, k, v = (rng.integers(-128, 128, (12, 8)) for _ in range(3))
    out = gv.attention_int(q, k, v, mask, 0.05, 0.05, 0.02, 0.02, 12)
    assert (out[3] == 0).all()


@pytest.mark.parametrize("g,nnz,lines,want", [(1, 2000, 8, (1, 7)), (70, 100, 8, (7, 1)),
                                              (0, 10, 8, (0, 8)), (3, 0, 8, (8, 0)),
                                              (0, 0, 4, (4, 0)), (10, 1970, 8, (4, 4))])
def test_line_split_with_clamp(g, nnz, lines, want):
    assert gv.line_split(g, 197, nnz, lines) == want
    assert gv.spec_line_split(g, 197, nnz, lines) == want       # the deviation does not apply


@pytest.mark.parametrize("g,nnz,spec,want", [
    (1, 392, (2, 6), (1, 7)),      # lines_d <= G: one key, a second dense line would idle
    (3, 289, (5, 3), (3, 5)),
    (7, 334, (6, 2), (4, 4)),      # ceil(7/4) = ceil(7/6) = 2 key groups; sparse gets 2 lines
    (15, 974, (6, 2), (5, 3)),     # 3 key groups either way
    (6, 1093, (4, 4), (3, 5)),     # 2 groups either way, 219 sparse groups instead of 274
    (10, 3056, (3, 5), (3, 5)),    # 2 dense lines would be slower (5 groups): formula kept
])
def test_line_split_caps_dense_lines_at_g_and_minimises_groups(g, nnz, spec, want):
    assert gv.spec_line_split(g, 197, nnz, 8) == spec
    assert gv.line_split(g, 197, nnz, 8) == want


def test_line_split_rule_on_a_sweep():
    """The deliberate deviation from the spec's formula, everywhere both engines have work:
    1 <= lines_d <= min(spec, G), and no lines_d in that range needs fewer SDDMM groups."""
    n = 197
    for lines in (2, 3, 4, 8):
        for g in range(1, 40):
            for nnz in (1, 7, 100, 392, 1000, 4086):
                ld, ls = gv.line_split(g, n, nnz, lines)
                spec, _ = gv.spec_line_split(g, n, nnz, lines)
                assert ld + ls == lines and 1 <= ld <= min(spec, g)
                cost = lambda x: max(-(-g // x) * n, -(-nnz // (lines - x)))
                assert cost(ld) == min(cost(x) for x in range(1, min(spec, g) + 1))
                assert cost(ld) <= cost(spec)


@pytest.mark.parametrize("col_ptr,row_idx,match", [
    ([0, 2, 1, 3], [0, 1, 2], "not monotone"),
    ([1, 2, 3], [0, 1, 2], r"col_ptr\[0\] must be 0"),
    ([0, 2, 4], [0, 1, 2], "nnz mismatch"),
    ([0, 2, 3], [0, 8, 2], "out of range"),
    ([0, 2, 3], [1, 0, 2], "not strictly increasing"),
])
def test_malformed_csc_is_a_clear_error(col_ptr, row_idx, match):
    with pytest.raises(ValueError, match=match):
        gv.check_csc(np.array(col_ptr), np.array(row_idx), n_rows=8)


def test_bad_masks_are_clear_errors():
    with pytest.raises(TypeError, match="boolean"):
        gv.compile_mask(np.zeros((4, 4), np.int8), 2)
    with pytest.raises(ValueError, match="square"):
        gv.compile_mask(np.zeros((4, 5), bool), 2)
    with pytest.raises(ValueError, match="theta_d"):
        gv.compile_mask(np.zeros((4, 4), bool), -1)


def test_exp_lut_and_exp2_int():
    assert gv.EXP_LUT[0] == 2 ** gv.E_BITS
    assert gv.EXP_LUT.min() > 2 ** (gv.E_BITS - 1)
    x = np.arange(0, 40 * 256, 7)
    e = gv.exp2_int(x)
    ref = 2.0 ** gv.E_BITS * 2.0 ** (-x / 256)
    assert np.abs(e - ref).max() <= 0.5 + 2 ** gv.E_BITS * 2 ** -15
    assert gv.exp2_int(np.array([2 ** 23]))[0] == 0


@pytest.mark.parametrize("seed,scales", [(0, (1 / 32, 1 / 32, 1 / 64, 1 / 64)),
                                         (1, (1 / 8, 1 / 8, 1 / 64, 1 / 128)),   # sharp softmax
                                         (2, (1 / 256, 1 / 256, 1 / 32, 1 / 32)),  # flat softmax
                                         (3, (0.05, 0.03, 0.01, 0.004))])
def test_integer_model_within_stated_bound_of_float(seed, scales):
    rng = np.random.default_rng(seed)
    n, d = 40, 16
    mask = vit_like_mask(n, rng, globals_=(0, 7, 19))
    q, k, v = (rng.integers(-128, 128, (n, d)) for _ in range(3))
    ref = gv.attention_float(q, k, v, mask, *scales)
    out = gv.attention_int(q, k, v, mask, *scales, theta_d=10)
    inside = np.abs(ref) <= 127
    assert inside.mean() > 0.3
    err = np.abs(out - ref)[inside]
    assert err.max() <= gv.error_bound(128 * scales[2] / scales[3]), err.max()
    # outside the range the output saturates toward the float value
    assert (np.sign(out[~inside]) == np.sign(ref[~inside])).all()
    assert (np.abs(out[~inside]) >= 127).all()


@needs_data
@pytest.mark.parametrize("layer,head", [(0, 0), (2, 0), (11, 2)])
def test_integer_model_on_real_heads(layer, head):
    mask = load_real_mask()[layer, head]
    rng = np.random.default_rng(layer * 3 + head)
    q, k, v = (rng.integers(-128, 128, (197, 64)) for _ in range(3))
    scales = (1 / 32, 1 / 32, 1 / 64, 1 / 64)
    ref = gv.attention_float(q, k, v, mask, *scales)
    out = gv.attention_int(q, k, v, mask, *scales, theta_d=50)
    assert np.abs(out - ref).max() <= 1.0        # error_bound(128) = 1.13


def test_error_bound_on_random_shapes_masks_and_scales():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(150):
        n, d = int(rng.integers(2, 40)), int(rng.integers(1, 20))
        mask = rng.random((n, n)) < rng.random()
        q, k, v = (rng.integers(-128, 128, (n, d)) for _ in range(3))
        sc = tuple(10 ** rng.uniform(-3, -0.5, 4))
        ref = gv.attention_float(q, k, v, mask, *sc)
        out = gv.attention_int(q, k, v, mask, *sc, theta_d=int(rng.integers(0, n)))
        inside = np.abs(ref) <= 127
        if inside.any():
            assert np.abs(out - ref)[inside].max() <= gv.error_bound(
                np.abs(v).max() * sc[2] / sc[3])
            checked += 1
    assert checked > 100


def test_engine_split_equals_plain_masked_model():
    """Computing per engine and merging equals one masked pass over the whole matrix."""
    rng = np.random.default_rng(5)
    n, d = 24, 8
    mask = vit_like_mask(n, rng, globals_=(0, 3))
    mask[5, 3] = True                     # a zero inside the dense block
    q, k, v = (rng.integers(-128, 128, (n, d)) for _ in range(3))
    cm = gv.compile_mask(mask, theta_d=8)
    assert cm.g >= 1 and not cm.dense_valid.all()
    rq_s, rq_o = gv.score_requant(0.04, 0.04, d), gv.out_requant(0.02, 0.02)
    split = gv.attention_int_compiled(q, k, v, cm, rq_s, rq_o)
    # plain model: same formula on the full matrix
    from vitaccel.golden.fixedpoint import reciprocal, requantize
    t = requantize(q @ k.T, rq_s, gv.T_BITS)
    t = np.where(mask, -(1 << 23), t)
    m = t.max(axis=1)
    e = np.where(mask, 0, gv.exp2_int(np.maximum(m[:, None] - t, 0)))
    r, _ = reciprocal(e.sum(1), gv.RECIP_FRAC, out_bits=gv.E_BITS + 3)
    plain = requantize((e @ v) * r[:, None], rq_o, 8)
    assert np.array_equal(split, plain)


def test_autoencoder_identity_like_and_bound():
    rng = np.random.default_rng(3)
    h = 3
    x = rng.integers(-128, 128, (h, 10, 8))
    assert gv.autoencode(x, None, None, None) is not None
    assert np.array_equal(gv.autoencode(x, None, None, None), x)
    ae = {"enc_w": rng.integers(-20, 20, (2, 3)), "enc_b": rng.integers(-100, 100, 2),
          "dec_w": rng.integers(-20, 20, (3, 2)), "dec_b": rng.integers(-100, 100, 3)}
    from vitaccel.golden.fixedpoint import quantize_multiplier
    enc, dec = 1 / 64, 1 / 32
    y = gv.autoencode(x, ae, quantize_multiplier(enc), quantize_multiplier(dec))
    assert y.shape == x.shape
    ref = gv.autoencode_float(x, ae, enc, dec)
    inside = np.abs(ref) < 120
    # z is rounded to 0.5 LSB then scaled by |dec_w| <= 20 * 2 terms * dec_scale
    bound = 0.5 + 0.5 * 2 * 20 * dec
    assert np.abs(y - ref)[inside].max() <= bound
    assert gv.ae_hidden(3) == 2 and gv.ae_hidden(6) == 3 and gv.ae_hidden(12) == 6
    with pytest.raises(ValueError, match="missing 'dec_b'"):
        gv.check_ae({k: v for k, v in ae.items() if k != "dec_b"}, 3)
    with pytest.raises(ValueError, match="enc_w"):
        gv.check_ae({**ae, "enc_w": np.zeros((3, 3), int)}, 3)


def test_analytical_model_by_hand():
    """The spec's formula on the toy case (G=2, N=8, nnz=17, d=8, h=1, L=8, PE_W=4): split
    (3, 5), f=2; SDDMM max(2*3*2, 4*2) = 12, SpMM max(ceil(128/12), ceil(136/20)) = 11."""
    c = gv.analytical_cycles(2, 8, 17, 8, 1, lines=8, pe_w=4)
    assert (c["lines_d"], c["lines_s"], c["sddmm"], c["spmm"], c["total"]) == (3, 5, 12, 11, 23)
