"""Golden models of ViTCoD (You et al., HPCA'23): mask compiler, float reference, integer model.

Three parts, all NumPy:

1. **Mask compiler** (offline, in Python as in the paper):
   :func:`prune_by_information` turns averaged attention maps into a fixed mask (True = pruned)
   with the upstream semantics (keep the top ``k + 1`` entries of a row, where ``k`` is the
   smallest count whose sorted prefix sum reaches ``theta_p``; then force the CLS row and column);
   :func:`compile_mask` splits a mask into global (dense) columns, ``nnz(col) > theta_d``, and
   sparse columns in CSC, with the dense-block validity bitmap, a row-order permutation of the
   sparse entries (for output-stationary SpMM) and :func:`line_split` (the PE-line split: the
   spec's formula, :func:`spec_line_split`, as an upper bound, at most G dense lines, fewest
   group cycles). It never edits the user's mask; :func:`check_csc` validates CSC from any
   source.

2. **Float reference** (:func:`attention_float`): dequantise, masked softmax attention in float64.

3. **Integer model** (:func:`attention_int`), the contract the RTL matches bit for bit. Per head,
   with ``s_ij = q_i . k_j`` (exact int32):

   * ``t_ij = requantize(s_ij, rq_score, T_BITS)``: the score in the log2 domain with
     ``T_FRAC`` fractional bits (``rq_score`` represents ``q_scale k_scale / sqrt(d) * log2(e) *
     2**T_FRAC``), so ``exp`` becomes a power of two;
   * ``m_i = max_j t_ij`` over the kept entries of row i, the **exact row max** taken over both
     engines (max of the Denser engine's and the Sparser engine's partial maxima);
   * ``e_ij = rshift_round(EXP_LUT[x & (2**T_FRAC - 1)], min(x >> T_FRAC, 31))`` with
     ``x = m_i - t_ij >= 0`` and ``EXP_LUT[f] = RHU(2**E_BITS * 2**(-f / 2**T_FRAC))``, so
     ``e_ij`` is ``2**E_BITS * exp(real score - real max)`` in ``E_BITS + 1`` unsigned bits
     (the row maximum gives exactly ``2**E_BITS``);
   * ``l_i = l_i(dense) + l_i(sparse)`` and ``acc_ic = sum_j e_ij v_jc`` likewise merged;
   * one normalisation: ``r_i = reciprocal(l_i, RECIP_FRAC)`` and
     ``out_ic = requantize(acc_ic * r_i, rq_out)`` with ``rq_out`` representing
     ``v_scale / out_scale * 2**-RECIP_FRAC``. A row with no kept key has ``acc = 0`` and gives 0.

   Error bound against the float reference (stated and tested in ``tests/test_golden_vitcod.py``):
   wherever the float output is inside the int8 range,
   ``|out_int - out_float / out_scale| <= error_bound(max|v| * v_scale / out_scale)``
   ``= 0.75 + 0.003 * max|v| * v_scale / out_scale`` LSB (1.14 LSB for v_scale = out_scale, and
   measured 0.62 on the real DeiT-Tiny mask with random int8 data). Scores that saturate T_BITS
   are outside the bound (they need real scores beyond +-2**15 / log2(e)). Sources: each
   log2-domain score is rounded to half an LSB of 2**-T_FRAC (the row max's rounding is common
   to the row and cancels, so e_ij carries a relative error up to 2**(2**-(T_FRAC+1)) - 1 =
   0.14 %, which moves the weighted average by up to twice that); the LUT and the shift round
   e to an integer; the reciprocal keeps RECIP_FRAC - log2(l_max) >= 9 bits (N <= 256); and the
   final RHU rounding (0.5 LSB).

4. **Q/K auto-encoder** (:func:`autoencode`): across the head axis, for every (token, feature),
   ``z = requantize(enc_w @ x + enc_b)`` (h -> ceil(h/2)) and ``y = requantize(dec_w @ z +
   dec_b)`` (back to h); int8 weights, int32 biases. The same encoder/decoder pair serves Q and
   K (one set of weights, as the RTL holds one). ``ae=None`` bypasses it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pathlib import Path

import numpy as np

#: The ViTCoD authors' DeiT-Tiny fixed mask (12 layers x 3 heads x 197 x 197, True = pruned),
#: shipped with the package under its Apache-2.0 licence (see data/vitcod_deit_tiny/README.md).
REAL_MASK_PATH = Path(__file__).resolve().parent / "data" / "vitcod_deit_tiny" / "mask_info_0.95.npz"


def toy_mask() -> np.ndarray:
    """The spec's 8 x 8 toy case (True = pruned): columns 0 and 5 fully kept (global at
    theta_d = 4), the other columns sparse."""
    keep = np.zeros((8, 8), dtype=bool)
    keep[:, 0] = keep[:, 5] = True
    for col, rows in {1: [0, 1], 2: [0, 1, 2], 3: [0, 2, 3], 4: [0, 3, 4], 6: [0, 5, 6],
                      7: [0, 6, 7]}.items():
        keep[rows, col] = True
    return ~keep


def load_real_mask() -> np.ndarray:
    """The real DeiT-Tiny mask, shape (12, 3, 197, 197), dtype bool (True = pruned)."""
    with np.load(REAL_MASK_PATH) as data:
        return data["pruned"].astype(bool)


from .fixedpoint import (Requant, check_int_array, quantize_multiplier, reciprocal, requantize,
                         rshift_round)

__all__ = [
    "T_FRAC", "T_BITS", "E_BITS", "RECIP_FRAC", "ACC_BITS", "OUT_ERROR_ABS", "OUT_ERROR_REL",
    "error_bound", "EXP_LUT",
    "CompiledMask", "prune_by_information", "compile_mask", "check_csc", "line_split",
    "spec_line_split",
    "score_requant", "out_requant", "exp2_int", "attention_float", "attention_int",
    "attention_int_compiled", "attention_int_batched", "ae_hidden", "check_ae", "autoencode", "autoencode_float",
    "analytical_cycles", "dense_baseline_cycles", "engine_ideal_cycles", "spmm_schedule",
    "SPMM_DONE_LATENCY",
]

#: Fractional bits of the log2-domain score ``t``.
T_FRAC = 8
#: Signed width of ``t`` (saturating): +-2**15 in log2 units, far beyond any useful score.
T_BITS = 24
#: ``e`` of the row maximum is ``2**E_BITS``; e has ``E_BITS + 1`` unsigned bits.
E_BITS = 15
#: Fraction bits of the reciprocal of the row sum.
RECIP_FRAC = 32
#: Width of the row-sum and output accumulators (N <= 256: 256 * 2**15 * 128 = 2**30 fits).
ACC_BITS = 32
#: Stated bound, see :func:`error_bound`: absolute part (final RHU rounding, reciprocal, small-e
#: rounding) and the part relative to the value amplitude (the score's 2**-(T_FRAC+1) rounding
#: gives each e a relative error of 0.14 %, which moves a weighted average by up to twice that).
OUT_ERROR_ABS = 0.75
OUT_ERROR_REL = 0.003


def error_bound(v_amplitude_lsb: float) -> float:
    """Bound on |out_int - out_float / out_scale| for ``v_amplitude_lsb = max|v| * v_scale /
    out_scale`` (the largest value magnitude in output LSBs)."""
    return OUT_ERROR_ABS + OUT_ERROR_REL * v_amplitude_lsb

#: ``EXP_LUT[f] = RHU(2**E_BITS * 2**(-f / 2**T_FRAC))``; values in (2**(E_BITS-1), 2**E_BITS].
EXP_LUT = np.array([math.floor(2.0 ** E_BITS * 2.0 ** (-f / 2 ** T_FRAC) + 0.5)
                    for f in range(2 ** T_FRAC)], dtype=np.int64)


# --- mask compiler ------------------------------------------------------------------------------

def _check_mask(mask, name="mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"{name}: expected a boolean array (True = pruned), got dtype {m.dtype}")
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"{name}: expected a square N x N mask, got shape {m.shape}")
    return m


def prune_by_information(attn_avg, theta_p: float) -> np.ndarray:
    """Fixed mask (True = pruned) from an averaged attention map (N x N, rows sum to ~1).

    Per row: sort descending, find the smallest ``k`` whose prefix sum reaches ``theta_p``, keep
    the top ``k + 1`` entries (the upstream code keeps one extra). Then the CLS row and the CLS
    column (index 0) are forced to be kept. Ties are broken by column index (stable sort).
    """
    a = np.asarray(attn_avg, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"attn_avg: expected a square N x N map, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or (a < 0).any():
        raise ValueError("attn_avg: values must be finite and >= 0")
    if not (isinstance(theta_p, (int, float)) and 0.0 < theta_p <= 1.0):
        raise ValueError(f"theta_p must be in (0, 1], got {theta_p!r}")
    n = a.shape[0]
    pruned = np.ones((n, n), dtype=bool)
    for i in range(n):
        order = np.argsort(-a[i], kind="stable")
        prefix = np.cumsum(a[i][order])
        reached = np.nonzero(prefix >= theta_p)[0]
        k = int(reached[0]) + 1 if len(reached) else n    # smallest count reaching theta_p
        pruned[i, order[:min(k + 1, n)]] = False          # the upstream "one extra entry"
    pruned[0, :] = False
    pruned[:, 0] = False
    return pruned


def spec_line_split(g: int, n: int, nnz: int, lines: int) -> tuple[int, int]:
    """The spec's split (step 6), as the authors' simulator has it: ``lines_d = floor(L * G*N /
    (G*N + nnz))`` clamped to ``[1, L-1]`` when both engines have work (the upstream code divides
    by zero when a side reaches 0); all lines go to the only engine with work otherwise (to the
    Denser engine when neither has). :func:`line_split` (what the hardware runs) starts here."""
    if lines < 2:
        raise ValueError(f"lines must be >= 2 to split between two engines, got {lines}")
    dense_work = g * n
    if nnz == 0:
        return lines, 0
    if dense_work == 0:
        return 0, lines
    lines_d = (lines * dense_work) // (dense_work + nnz)
    lines_d = min(max(lines_d, 1), lines - 1)
    return lines_d, lines - lines_d


def line_split(g: int, n: int, nnz: int, lines: int) -> tuple[int, int]:
    """``(lines_d, lines_s)``, the PE-line split the hardware runs (a run-time value of each
    head's command): :func:`spec_line_split` with one extra rule.

    **Deliberate deviation** when both engines have work: with ``F`` the spec's ``lines_d``,
    ``lines_d`` is the value in ``1 .. min(F, G)`` that minimises the larger of the two engines'
    SDDMM group counts, ``max(ceil(G / lines_d) * N, ceil(nnz / lines_s))`` (a group costs
    ``ceil(d / MACs)`` cycles on either engine, and the SpMM phase scales the same way), the
    smallest such value on a tie. Reasons: the Denser engine is K-stationary, one global key per
    line, so lines past G only idle (G = 1 with F = 2, frequent on the DeiT-Tiny mask, left the
    Denser engine at 50 % efficiency); and when G is not a multiple of ``lines_d`` the last key
    group leaves lines idle, so fewer dense lines can be as fast while the Sparser engine gains
    lines (G = 7, F = 6: 4 lines take the same two groups). ``F`` stays an upper bound (values
    above it are not tried, so the split never leans further towards the Denser engine than the
    spec's); the effect is measured in ``benchmarks/results/vitcod.md``. Pinned by
    ``tests/test_golden_vitcod.py::test_line_split_*``.
    """
    formula, lines_s = spec_line_split(g, n, nnz, lines)
    if formula == 0 or lines_s == 0:        # one engine has no work: it gets no line
        return formula, lines_s

    def groups(lines_d):
        return max(-(-g // lines_d) * n, -(-nnz // (lines - lines_d)))

    lines_d = min(range(1, min(formula, g) + 1), key=lambda ld: (groups(ld), ld))
    return lines_d, lines - lines_d


def check_csc(col_ptr, row_idx, n_rows: int, n_cols: int | None = None):
    """Validate a CSC index (``col_ptr`` monotone from 0 to nnz, ``row_idx`` in ``[0, n_rows)``,
    strictly increasing inside a column). Returns both as int64 arrays or raises ValueError."""
    cp = np.asarray(col_ptr)
    ri = np.asarray(row_idx)
    if cp.dtype.kind not in "iu" or ri.dtype.kind not in "iu":
        raise ValueError("CSC: col_ptr and row_idx must be integer arrays")
    cp, ri = cp.astype(np.int64), ri.astype(np.int64)
    if cp.ndim != 1 or ri.ndim != 1 or len(cp) < 1:
        raise ValueError("CSC: col_ptr and row_idx must be 1-D, col_ptr non-empty")
    if n_cols is not None and len(cp) != n_cols + 1:
        raise ValueError(f"CSC: col_ptr has {len(cp)} entries, expected {n_cols + 1} "
                         f"(number of sparse columns + 1)")
    if cp[0] != 0:
        raise ValueError(f"CSC: col_ptr[0] must be 0, got {cp[0]}")
    steps = np.diff(cp)
    if (steps < 0).any():
        j = int(np.argmax(steps < 0))
        raise ValueError(f"CSC: col_ptr is not monotone at column {j}: {cp[j]} > {cp[j + 1]}")
    if cp[-1] != len(ri):
        raise ValueError(f"CSC: nnz mismatch: col_ptr[-1] = {cp[-1]} but row_idx has {len(ri)} "
                         f"entries")
    if len(ri) and (ri.min() < 0 or ri.max() >= n_rows):
        bad = int(np.argmax((ri < 0) | (ri >= n_rows)))
        raise ValueError(f"CSC: row_idx[{bad}] = {ri[bad]} is out of range [0, {n_rows})")
    for j in range(len(cp) - 1):
        seg = ri[cp[j]:cp[j + 1]]
        if len(seg) > 1 and (np.diff(seg) <= 0).any():
            raise ValueError(f"CSC: row_idx of column {j} is not strictly increasing")
    return cp, ri


@dataclass(frozen=True, eq=False)
class CompiledMask:
    """One head's mask split for the two engines (see :func:`compile_mask`)."""
    n: int
    theta_d: int
    glob_idx: np.ndarray       # (G,) global key columns, ascending
    sparse_cols: np.ndarray    # (N-G,) the other columns, ascending
    col_ptr: np.ndarray        # (N-G+1,) CSC pointers over sparse_cols
    row_idx: np.ndarray        # (nnz,) query indices, ascending inside a column
    dense_valid: np.ndarray    # (N, G) bool, True = kept (the dense block is not all ones)
    row_order: np.ndarray      # (nnz,) CSC entry indices sorted by (row, column): SpMM order
    row_ptr: np.ndarray        # (N+1,) row i's entries are row_order[row_ptr[i]:row_ptr[i+1]]

    @property
    def g(self) -> int:
        return len(self.glob_idx)

    @property
    def nnz(self) -> int:
        return len(self.row_idx)

    @property
    def entry_col(self) -> np.ndarray:
        """Key column of every CSC entry (what the walker emits with each row)."""
        return np.repeat(self.sparse_cols, np.diff(self.col_ptr))

    def split(self, lines: int) -> tuple[int, int]:
        return line_split(self.g, self.n, self.nnz, lines)

    def kept(self) -> np.ndarray:
        """The N x N kept-matrix this index describes (True = kept), rebuilt from the index."""
        keep = np.zeros((self.n, self.n), dtype=bool)
        keep[:, self.glob_idx] = self.dense_valid
        keep[self.row_idx, self.entry_col] = True
        return keep


def compile_mask(mask, theta_d: int) -> CompiledMask:
    """Split a mask (N x N bool, True = pruned) into the global/sparse index of both engines.

    Column j is global iff ``nnz(column j) > theta_d``. The mask is used as given (never edited):
    a user mask may give G = 0 or keep nothing in a row. The result is validated (CSC checks and
    a round trip back to the mask) before it is returned.
    """
    m = _check_mask(mask)
    if isinstance(theta_d, bool) or not isinstance(theta_d, (int, np.integer)) or theta_d < 0:
        raise ValueError(f"theta_d must be an integer >= 0, got {theta_d!r}")
    n = m.shape[0]
    keep = ~m
    col_nnz = keep.sum(axis=0)
    is_glob = col_nnz > theta_d
    glob_idx = np.nonzero(is_glob)[0].astype(np.int64)
    sparse_cols = np.nonzero(~is_glob)[0].astype(np.int64)
    col_ptr = np.concatenate([[0], np.cumsum(col_nnz[sparse_cols])]).astype(np.int64)
    row_idx = np.concatenate([np.nonzero(keep[:, j])[0] for j in sparse_cols]
                             + [np.zeros(0, np.int64)]).astype(np.int64)
    dense_valid = keep[:, glob_idx].copy()
    entry_col = np.repeat(sparse_cols, np.diff(col_ptr))
    row_order = np.lexsort((entry_col, row_idx)).astype(np.int64)
    row_ptr = np.concatenate([[0], np.cumsum(np.bincount(row_idx, minlength=n))]).astype(np.int64)
    cm = CompiledMask(n, int(theta_d), glob_idx, sparse_cols, col_ptr, row_idx, dense_valid,
                      row_order, row_ptr)
    check_csc(cm.col_ptr, cm.row_idx, n, len(sparse_cols))
    if not np.array_equal(cm.kept(), keep):            # cannot happen; guards future edits
        raise AssertionError("compile_mask: the index does not describe the mask")
    return cm


# --- integer attention --------------------------------------------------------------------------

def score_requant(q_scale: float, k_scale: float, d: int) -> Requant:
    """``s_ij -> t_ij``: q_scale k_scale / sqrt(d) * log2(e) * 2**T_FRAC."""
    return quantize_multiplier(q_scale * k_scale / math.sqrt(d) * math.log2(math.e) * 2 ** T_FRAC)


def out_requant(v_scale: float, out_scale: float) -> Requant:
    """``acc * r -> out``: v_scale / out_scale * 2**-RECIP_FRAC."""
    return quantize_multiplier(v_scale / out_scale * 2.0 ** -RECIP_FRAC)


def exp2_int(x) -> np.ndarray:
    """``e = rshift_round(EXP_LUT[x mod 2**T_FRAC], min(x >> T_FRAC, 31))`` for ``x >= 0``."""
    x = np.asarray(x, dtype=np.int64)
    if (x < 0).any():
        raise ValueError("exp2_int: x = m - t must be >= 0")
    lut = EXP_LUT[x & (2 ** T_FRAC - 1)]
    shift = np.minimum(x >> T_FRAC, 31)
    out = np.empty_like(lut)
    for s in np.unique(shift):
        sel = shift == s
        out[sel] = rshift_round(lut[sel], int(s))
    return out


#: A row's done flags reach the hand-off this many cycles after its last issue (the phase-2
#: pipeline of rtl/vitcod/core.py, behind the score buffers' output registers).
SPMM_DONE_LATENCY = 9


def spmm_schedule(cnt, f, dgroups, lines_s, ready_delay=None, normalisers=None):
    """Cycle model of the core's SpMM phase (no stalls), pinned cycle for cycle against the RTL
    by ``tests/test_vitcod_rtl.py``; ``cnt`` = kept sparse entries per row, ``f = ceil(d /
    MACs)``, ``dgroups = ceil(G / lines_d)``.

    The engines walk the rows each at its own pace, at most one row ahead of the oldest row not
    yet handed off (two accumulator banks); the Denser engine takes ``dgroups * f`` cycles per
    row (G = 0: one cycle, no op); the Sparser engine streams its (entry, chunk) pairs in row
    order, ``w = min(lines_s, f)`` per cycle, running on into the next row (a short tail waits
    for that row's bank, unless there is no next row to pack with); an empty row passes in one
    cycle. A row's done flags are seen :data:`SPMM_DONE_LATENCY` cycles after its last issue;
    the hand-off then takes one cycle, and only when the row's normaliser slot (round-robin
    over ``normalisers``; default: one per row, never full) is free; the slot's reciprocal lets
    the row stream out ``ready_delay[row]`` cycles after the hand-off (default 0), one chunk per
    cycle and one row after the other; the slot is free again once its last chunk is fed.

    Returns (SpMM cycles, dense issue cycles, sparse issue cycles, cycle the last chunk is fed),
    times from the first SPMM cycle."""
    n = len(cnt)
    ready_delay = [0] * n if ready_delay is None else ready_delay
    normalisers = n + 1 if normalisers is None else normalisers
    w, pipe = min(lines_s, f), SPMM_DONE_LATENCY
    y = dgi = dc = xa = p = c0 = hand = 0
    pend, done_d, done_s = int(cnt[0]), {}, {}
    t = spmm = busy_d = busy_s = 0
    free = [0] * normalisers               # cycle from which the slot takes a row
    feed_end = -1                          # cycle after the previous row's last chunk
    last_feed = 0
    while hand < n:
        if t > 10 ** 7:                    # pragma: no cover - a bug, not an input error
            raise RuntimeError("the ViTCoD SpMM schedule does not terminate")
        lo = hand
        spmm += not (y == n and xa == n)
        if y < n and y <= lo + 1:
            busy_d += dgroups > 0
            if dgroups == 0 or (dc == f - 1 and dgi == dgroups - 1):
                done_d[y], y, dgi, dc = t + pipe, y + 1, 0, 0
            elif dc == f - 1:
                dc, dgi = 0, dgi + 1
            else:
                dc += 1
        if xa < n and xa <= lo + 1:
            left = pend - p
            n_a = w if left >= 2 else min(w, f - c0)
            b_exists = xa + 1 < n and cnt[xa + 1] > 0
            go = left > 0 and (n_a == w or not b_exists or xa <= lo)
            if left <= 0 or (go and left == 1 and n_a == f - c0):
                done_s[xa], xa = t + pipe, xa + 1
                pend += int(cnt[xa]) if xa < n else 0
            if go:
                busy_s += 1
                n_b = w - n_a if n_a < w and b_exists else 0
                p, c0 = (p + 1, c0 + n_a + n_b - f) if c0 + n_a + n_b >= f else (p, c0 + n_a + n_b)
        if done_d.get(hand, t + 1) <= t and done_s.get(hand, t + 1) <= t \
                and free[hand % normalisers] <= t:
            feed = max(t + ready_delay[hand], feed_end)
            feed_end = feed + f
            free[hand % normalisers] = feed_end
            last_feed = feed + f - 1
            hand += 1
        t += 1
    return spmm, busy_d, busy_s, last_feed


def attention_float(q, k, v, mask, q_scale, k_scale, v_scale, out_scale) -> np.ndarray:
    """Masked softmax attention in float64, in output-LSB units (not rounded, not saturated).
    One head: q, k, v are N x d integers, mask N x N (True = pruned). Rows with no kept key
    give 0."""
    qf = np.asarray(q, np.float64) * q_scale
    kf = np.asarray(k, np.float64) * k_scale
    vf = np.asarray(v, np.float64) * v_scale
    d = qf.shape[1]
    s = qf @ kf.T / math.sqrt(d)
    s = np.where(mask, -np.inf, s)
    m = s.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(s - m)
    l = p.sum(axis=1, keepdims=True)
    o = np.divide(p @ vf, l, out=np.zeros((len(qf), vf.shape[1])), where=l > 0)
    return o / out_scale


def attention_int_compiled(q, k, v, cm: CompiledMask, rq_score: Requant, rq_out: Requant,
                           trace: dict | None = None) -> np.ndarray:
    """The integer model for one head, computed the way the two engines split it.

    Dense part: global columns x all rows, masked by ``dense_valid``; sparse part: the CSC
    entries. Row maxima, row sums and output accumulators are kept per engine and merged once.
    ``trace`` (optional dict) receives the intermediate arrays for debugging and tests.
    """
    q = np.asarray(q, np.int64)
    k = np.asarray(k, np.int64)
    v = np.asarray(v, np.int64)
    n, d = q.shape
    t_min = -(1 << (T_BITS - 1))
    # Denser engine: all N queries against the G global keys.
    s_dense = q @ k[cm.glob_idx].T                                       # N x G
    t_dense = requantize(s_dense, rq_score, T_BITS)
    t_dense = np.where(cm.dense_valid, t_dense, t_min)
    m_dense = t_dense.max(axis=1, initial=t_min)
    # Sparser engine: CSC entries (row, col), Q rows forwarded from the same Q buffer.
    ecol = cm.entry_col
    s_sparse = np.einsum("ij,ij->i", q[cm.row_idx], k[ecol]) if cm.nnz else np.zeros(0, np.int64)
    t_sparse = requantize(s_sparse, rq_score, T_BITS) if cm.nnz else np.zeros(0, np.int64)
    m_sparse = np.full(n, t_min, np.int64)
    np.maximum.at(m_sparse, cm.row_idx, t_sparse)
    m = np.maximum(m_dense, m_sparse)                                   # merged row max
    # exp, row sums and SpMM per engine
    e_dense = np.where(cm.dense_valid, exp2_int(np.maximum(m[:, None] - t_dense, 0)), 0)
    e_sparse = exp2_int(m[cm.row_idx] - t_sparse) if cm.nnz else np.zeros(0, np.int64)
    l_dense = e_dense.sum(axis=1)
    l_sparse = np.zeros(n, np.int64)
    np.add.at(l_sparse, cm.row_idx, e_sparse)
    acc_dense = e_dense @ v[cm.glob_idx] if cm.g else np.zeros((n, d), np.int64)
    acc_sparse = np.zeros((n, v.shape[1]), np.int64)
    np.add.at(acc_sparse, cm.row_idx, e_sparse[:, None] * v[ecol])
    # merge and one normalisation
    l_tot = l_dense + l_sparse
    acc = acc_dense + acc_sparse
    r, _ = reciprocal(l_tot, RECIP_FRAC, out_bits=E_BITS + 3)
    out = requantize(acc * r[:, None], rq_out, 8)
    if trace is not None:
        trace.update(t_dense=t_dense, t_sparse=t_sparse, m=m, e_dense=e_dense, e_sparse=e_sparse,
                     l=l_tot, acc=acc, r=r)
    return np.asarray(out, np.int64)


def attention_int_batched(q, k, v, keep, rq_score: Requant, rq_out: Requant) -> np.ndarray:
    """:func:`attention_int_compiled` on a batch of heads at once, from the kept-matrix.

    ``q``, ``k``, ``v`` (..., N, d) integers, ``keep`` (..., N, N) bool (True = kept, broadcast
    over the leading axes). The same arithmetic as the two engines (exact row max, EXP_LUT
    power of two, exact row sums and accumulators, one reciprocal and requantisation per row):
    splitting a row's entries between the engines changes neither the max nor the exact sums,
    so the results are identical (pinned by ``tests/test_golden_vitcod.py``). Model-level code
    (:mod:`vitaccel.model`) uses it to run thousands of images.
    """
    q = np.asarray(q, np.int64)
    k = np.asarray(k, np.int64)
    v = np.asarray(v, np.int64)
    keep = np.broadcast_to(np.asarray(keep, bool), q.shape[:-1] + (k.shape[-2],))
    t_min = -(1 << (T_BITS - 1))
    # float64 matmuls are exact: |q.k| <= 2**14 d and |e.v| <= 2**22 N stay far below 2**53.
    s = np.matmul(q.astype(np.float64), np.swapaxes(k, -1, -2).astype(np.float64))
    t = np.where(keep, requantize(np.rint(s).astype(np.int64), rq_score, T_BITS), t_min)
    m = t.max(axis=-1, keepdims=True)
    e = np.where(keep, exp2_int(np.maximum(m - t, 0)), 0)
    l_tot = e.sum(axis=-1)
    acc = np.rint(np.matmul(e.astype(np.float64), v.astype(np.float64))).astype(np.int64)
    r, _ = reciprocal(l_tot, RECIP_FRAC, out_bits=E_BITS + 3)
    return np.asarray(requantize(acc * np.asarray(r, np.int64)[..., None], rq_out, 8), np.int64)


def attention_int(q, k, v, mask, q_scale, k_scale, v_scale, out_scale, theta_d: int):
    """Integer model for one head from a mask: compiles it, then :func:`attention_int_compiled`."""
    cm = compile_mask(mask, theta_d)
    d = np.shape(q)[1]
    return attention_int_compiled(q, k, v, cm, score_requant(q_scale, k_scale, d),
                                  out_requant(v_scale, out_scale))


# --- Q/K auto-encoder ---------------------------------------------------------------------------

def ae_hidden(h: int) -> int:
    """h' = ceil(h / 2): 3 -> 2, 6 -> 3, 12 -> 6."""
    return -(-h // 2)


def check_ae(ae, h: int) -> dict:
    """Validate auto-encoder weights: enc_w (h' x h int8), enc_b (h' int32), dec_w (h x h' int8),
    dec_b (h int32)."""
    if not isinstance(ae, dict):
        raise TypeError(f"ae: expected a dict of weights, got {type(ae).__name__}")
    hh = ae_hidden(h)
    want = {"enc_w": ((hh, h), 8), "enc_b": ((hh,), 32), "dec_w": ((h, hh), 8),
            "dec_b": ((h,), 32)}
    extra = set(ae) - set(want)
    if extra:
        raise ValueError(f"ae: unknown keys {sorted(extra)}; expected {sorted(want)}")
    out = {}
    for key, (shape, bits) in want.items():
        if key not in ae:
            raise ValueError(f"ae: missing {key!r} (expected keys {sorted(want)})")
        out[key] = check_int_array(f"ae[{key!r}]", ae[key], bits, ndim=len(shape), shape=shape)
    return out


def autoencode(x, ae: dict | None, rq_enc: Requant, rq_dec: Requant) -> np.ndarray:
    """Compress and restore ``x`` (h x N x d int8) across heads; ``ae=None`` returns ``x``."""
    x = np.asarray(x, np.int64)
    if ae is None:
        return x
    w = check_ae(ae, x.shape[0])
    z = requantize(np.einsum("gh,hnc->gnc", w["enc_w"], x) + w["enc_b"][:, None, None], rq_enc, 8)
    y = requantize(np.einsum("hg,gnc->hnc", w["dec_w"], z) + w["dec_b"][:, None, None], rq_dec, 8)
    return np.asarray(y, np.int64)


def autoencode_float(x, ae: dict, enc_scale: float, dec_scale: float) -> np.ndarray:
    """The same auto-encoder without rounding or saturation (integer units)."""
    x = np.asarray(x, np.float64)
    w = check_ae(ae, x.shape[0])
    z = (np.einsum("gh,hnc->gnc", w["enc_w"], x) + w["enc_b"][:, None, None]) * enc_scale
    return (np.einsum("hg,gnc->hnc", w["dec_w"], z) + w["dec_b"][:, None, None]) * dec_scale


# --- cycle models (for the benchmark) -----------------------------------------------------------

def analytical_cycles(g: int, n: int, nnz: int, d: int, h: int, lines: int,
                      pe_w: int = 64) -> dict:
    """The authors' simulator model (spec, 'for comparison, not gospel'): per phase the max of
    the two engines; compute cycles only (no DRAM); with the authors' split
    (:func:`spec_line_split`)."""
    ld, ls = spec_line_split(g, n, nnz, lines)
    f = -(-d // max(pe_w // h, 1))
    macs = max(pe_w // h, 1)
    dense_sddmm = g * -(-n // ld) * f if ld else 0
    sparse_sddmm = -(-nnz // ls) * f if ls else 0
    dense_spmm = -(-(n * d * g) // (ld * macs)) if ld else 0
    sparse_spmm = -(-(nnz * d) // (ls * macs)) if ls else 0
    return {"lines_d": ld, "lines_s": ls, "sddmm": max(dense_sddmm, sparse_sddmm),
            "spmm": max(dense_spmm, sparse_spmm),
            "total": max(dense_sddmm, sparse_sddmm) + max(dense_spmm, sparse_spmm)}


def engine_ideal_cycles(g: int, n: int, nnz: int, d: int, lines_d: int, lines_s: int,
                        macs_per_line: int) -> tuple[int, int]:
    """Ideal cycles of each engine for SDDMM + SpMM: every score and every e*v row costs
    ceil(d / MACs_per_line) line-cycles, spread perfectly over the engine's lines."""
    f = -(-d // macs_per_line)
    dense = -(-(2 * g * n * f) // lines_d) if lines_d else 0
    sparse = -(-(2 * nnz * f) // lines_s) if lines_s else 0
    return dense, sparse


def dense_baseline_cycles(n: int, d: int, lines: int, macs_per_line: int) -> int:
    """All N^2 scores and the full S V on the same MAC budget, at perfect utilisation."""
    f = -(-d // macs_per_line)
    return -(-(2 * n * n * f) // lines)
