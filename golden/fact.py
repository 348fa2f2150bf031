"""Golden model of FACT's eager attention predictor (Qin et al., ISCA 2023), NumPy only.

Two layers, as every unit in vitaccel:

* **Exact references**: the integer projections ``Q = X Wq + bq`` / ``K = X Wk + bk`` at the X.W
  accumulator scale, their exact per-head scores ``Q_h K_h^T`` (:func:`exact_scores`), the int8
  attention an int8 accelerator would compute (:func:`int8_scores`), and float64 softmax attention
  (:func:`float_attention`).
* **The bit-accurate integer model** of the predictor (:func:`predict`), which the RTL in
  ``rtl/fact`` matches bit for bit.

The predictor
-------------
``LO_m(a)`` keeps the leading one of ``|a|`` and the ``m`` bits after it, truncating the rest
(toward zero): with ``e = floor(log2 |a|)`` and ``s = max(e - m, 0)``,
``LO_m(a) = sign(a) * ((|a| >> s) << s)``; ``LO_m(0) = 0``. ``m = 0`` is FACT's power of two.
In hardware ``LO_m(a)`` is the code ``(sign, shift s, mantissa M = |a| >> s)`` with ``M < 2**(m+1)``,
and a product of two codes is ``(-1)**(sa^sb) * (Ma*Mb) << (sa+sb)``: an exponent add, a tiny
``(m+1) x (m+1)``-bit product table and a shift. No multiplier.

::

    Q~ = sat_qk( LO(X) . LO(Wq) + bq )        K~ = sat_qk( LO(X) . LO(Wk) + bk )
    A~_h = LO(Q~_h) . LO(K~_h)^T               (head h = columns h*d .. h*d+d-1)

* ``sat_qk`` saturates to ``qk_bits`` signed bits **[choice]**: with int8 operands and D <= 512
  the sum of products fits 24 bits, so only an extreme bias saturates; it bounds the second LOD
  (an exponent of at most ``qk_bits - 1``) and keeps every score inside int64.
* Biases are integers at the X.W accumulator scale, folded in before the second LO (spec).
* Row top-k of ``A~``: the ``k`` largest of each row, ties to the lower key index.
* One-hot rows: ``A~_(1) - A~_(2) > T_int`` (strictly); a row with a single key is one-hot.
  ``T_int = round_RHU(t * sqrt(d) / (s_q s_k))`` with ``t`` in logits (after 1/sqrt(d)) and
  ``s_q = x_scale * wq_scale``, ``s_k = x_scale * wk_scale`` (:func:`threshold_int`).
* ``keep_kv[h, j]``: ``j`` is in the top-k of a row that is not one-hot, or is the argmax of a
  one-hot row. ``importance[j]``: the same events counted over rows and heads;
  ``high_precision = importance >= importance_threshold``.

Options beyond FACT (for the accuracy study in ``benchmarks/fact.py``):
``exact_operand="x"`` keeps X exact in the projections (``Q~ = X . LO(Wq)``, a shift of an int8),
``"q"`` keeps ``Q~`` exact in the scores (``A~ = Q~ . LO(K~)^T``, a shift of a wide value),
``"xq"`` both. Both still need no multiplier, only wider shifters.
"""
from __future__ import annotations

import math

import numpy as np

from .fixedpoint import check_int_array, leading_one_signed, quantize_multiplier, requantize, saturate

__all__ = [
    "EXACT_OPERANDS", "MAX_MANTISSA_BITS", "lo", "lo_code", "projections_exact", "projections",
    "predicted_scores", "threshold_int", "row_topk", "decisions", "predict", "exact_scores",
    "int8_scores", "float_scores", "float_attention", "topk_hit_rate", "score_bits",
    "acc_bits",
]

#: Mantissa bits the model (and the RTL product table) supports after the leading one.
MAX_MANTISSA_BITS = 3
EXACT_OPERANDS = ("none", "x", "q", "xq")


# --- leading-one operands ---------------------------------------------------------------------

def lo_code(a, mantissa_bits: int = 0):
    """``(sign, shift, mantissa)`` of ``LO_m(a)``: ``LO_m(a) = (-1)**sign * mantissa << shift``.

    ``mantissa < 2**(m+1)``; zero gives ``(False, 0, 0)``.
    """
    _check_m(mantissa_bits)
    a = np.asarray(a, dtype=np.int64)
    sign, exp, zero = leading_one_signed(a)
    shift = np.maximum(np.asarray(exp) - mantissa_bits, 0)
    mant = np.where(zero, 0, np.abs(a) >> shift)
    return np.asarray(sign, bool), np.where(zero, 0, shift).astype(np.int64), mant.astype(np.int64)


def lo(a, mantissa_bits: int = 0) -> np.ndarray:
    """``LO_m(a)`` as integers (see the module docstring)."""
    sign, shift, mant = lo_code(a, mantissa_bits)
    return np.where(sign, -(mant << shift), mant << shift).astype(np.int64)


def _check_m(m):
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 0 <= m <= MAX_MANTISSA_BITS:
        raise ValueError(f"mantissa_bits must be an integer in [0, {MAX_MANTISSA_BITS}], got {m!r}")


# --- widths -------------------------------------------------------------------------------------

def acc_bits(d_model: int) -> int:
    """Signed width that holds any ``LO(x) . LO(w)`` sum over ``d_model`` int8 terms (each at most
    ``128 * 128``) -- also any exact int8 dot product."""
    return (d_model * (1 << 14)).bit_length() + 1


def score_bits(qk_bits: int, d_head: int) -> int:
    """Signed width that holds any predicted score: ``d_head`` products of two values of at most
    ``2**(qk_bits-1)`` in magnitude."""
    return (d_head << (2 * qk_bits - 2)).bit_length() + 1


# --- the predictor ------------------------------------------------------------------------------

def _check_inputs(x, wq, wk, bq, bk):
    x = check_int_array("x", x, 8, ndim=2)
    n, dm = x.shape
    if n < 1 or dm < 1:
        raise ValueError(f"x must be non-empty (N x D), got shape {x.shape}")
    wq = check_int_array("wq", wq, 8, shape=(dm, dm), ndim=2)
    wk = check_int_array("wk", wk, 8, shape=(dm, dm), ndim=2)
    bq = np.zeros(dm, np.int64) if bq is None else check_int_array("bq", bq, 32, ndim=1, shape=(dm,))
    bk = np.zeros(dm, np.int64) if bk is None else check_int_array("bk", bk, 32, ndim=1, shape=(dm,))
    return x, wq, wk, bq, bk


def projections_exact(x, wq, wk, bq=None, bk=None):
    """Exact ``(Q, K)`` at the X.W accumulator scale: ``X W + b`` (int64)."""
    x, wq, wk, bq, bk = _check_inputs(x, wq, wk, bq, bk)
    return x @ wq + bq, x @ wk + bk


def projections(x, wq, wk, bq=None, bk=None, *, mantissa_bits=0, qk_bits=24, exact_operand="none"):
    """``(Q~, K~)``: ``sat_qk(LO(X) . LO(W) + b)`` (X exact when ``exact_operand`` has "x")."""
    x, wq, wk, bq, bk = _check_inputs(x, wq, wk, bq, bk)
    xo = x if "x" in exact_operand else lo(x, mantissa_bits)
    qt = saturate(xo @ lo(wq, mantissa_bits) + bq, qk_bits)
    kt = saturate(xo @ lo(wk, mantissa_bits) + bk, qk_bits)
    return np.asarray(qt, np.int64), np.asarray(kt, np.int64)


def _heads_split(a, heads):
    n, dm = a.shape
    if dm % heads:
        raise ValueError(f"D = {dm} is not a multiple of heads = {heads}")
    return a.reshape(n, heads, dm // heads).transpose(1, 0, 2)      # h x N x d


def predicted_scores(qt, kt, heads: int, *, mantissa_bits=0, exact_operand="none") -> np.ndarray:
    """``A~`` (h x N x N int64) from ``Q~``, ``K~`` (N x D)."""
    qo = qt if "q" in exact_operand else lo(qt, mantissa_bits)
    ko = lo(kt, mantissa_bits)
    qh, kh = _heads_split(np.asarray(qo, np.int64), heads), _heads_split(np.asarray(ko, np.int64), heads)
    return qh @ kh.transpose(0, 2, 1)


def threshold_int(threshold: float, d_head: int, x_scale: float, wq_scale: float,
                  wk_scale: float) -> int:
    """The one-hot threshold in score units: ``RHU(t * sqrt(d) / (s_q s_k))`` (>= 0)."""
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"onehot_threshold must be a finite number >= 0, got {threshold!r}")
    real = threshold * math.sqrt(d_head) / ((x_scale * wq_scale) * (x_scale * wk_scale))
    return int(math.floor(real + 0.5))


def row_topk(scores, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores of every row, best first, ties to the lower index."""
    scores = np.asarray(scores)
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, N = {n}], got {k}")
    # A stable sort of the negated scores keeps equal scores in index order.
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def decisions(scores, k: int, t_int: int, importance_threshold: int) -> dict:
    """Everything the predictor decides from ``A~`` (h x N x N)."""
    h, n, _ = scores.shape
    order = row_topk(scores, min(max(k, 2), n))                   # h x N x max(k, 2)
    top = order[..., :k]
    select = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(select, top, True, axis=-1)
    argmax = order[..., 0]
    best = np.take_along_axis(scores, order[..., :1], -1)[..., 0]
    if n >= 2:
        second = np.take_along_axis(scores, order[..., 1:2], -1)[..., 0]
        onehot = (best - second) > t_int
    else:
        onehot = np.ones((h, n), dtype=bool)
    contrib = np.where(onehot[..., None], np.eye(n, dtype=bool)[argmax], select)   # h x N x N
    keep_kv = contrib.any(axis=1)
    importance = contrib.sum(axis=(0, 1)).astype(np.int64)
    return {"select": select, "onehot": onehot, "argmax": argmax.astype(np.int64),
            "keep_kv": keep_kv, "importance": importance,
            "high_precision": importance >= importance_threshold}


def predict(x, wq, wk, bq=None, bk=None, *, heads: int, k: int, t_int: int,
            importance_threshold: int, mantissa_bits: int = 0, qk_bits: int = 24,
            exact_operand: str = "none", with_scores: bool = False) -> dict:
    """The bit-accurate predictor: ``select``, ``onehot``, ``argmax``, ``keep_kv``, ``importance``,
    ``high_precision`` (and ``scores`` = ``A~`` with ``with_scores``)."""
    _check_m(mantissa_bits)
    if exact_operand not in EXACT_OPERANDS:
        raise ValueError(f"exact_operand must be one of {EXACT_OPERANDS}, got {exact_operand!r}")
    qt, kt = projections(x, wq, wk, bq, bk, mantissa_bits=mantissa_bits, qk_bits=qk_bits,
                         exact_operand=exact_operand)
    scores = predicted_scores(qt, kt, heads, mantissa_bits=mantissa_bits, exact_operand=exact_operand)
    out = decisions(scores, k, t_int, importance_threshold)
    if with_scores:
        out["scores"] = scores
    return out


# --- exact references ---------------------------------------------------------------------------

def exact_scores(x, wq, wk, bq=None, bk=None, *, heads: int) -> np.ndarray:
    """``Q_h K_h^T`` of the exact integer projections (h x N x N, exact in int64 or objects)."""
    q, k = projections_exact(x, wq, wk, bq, bk)
    big = max(int(np.abs(q).max()), 1) * max(int(np.abs(k).max()), 1) * (q.shape[1] // heads)
    if big >= 1 << 62:
        q, k = q.astype(object), k.astype(object)
    qh, kh = _heads_split(q, heads), _heads_split(k, heads)
    return np.stack([qh[i] @ kh[i].T for i in range(heads)])


def int8_scores(x, wq, wk, bq=None, bk=None, *, heads: int) -> np.ndarray:
    """Scores of int8 attention: Q and K requantised (RHU, saturating) to int8 with a per-tensor
    scale that maps the largest magnitude to 127, then ``Q8_h K8_h^T`` exactly (int64)."""
    q, k = projections_exact(x, wq, wk, bq, bk)
    out = []
    for acc in (q, k):
        peak = max(int(np.abs(acc).max()), 1)
        out.append(np.asarray(requantize(acc, quantize_multiplier(127 / peak)), np.int64))
    qh, kh = _heads_split(out[0], heads), _heads_split(out[1], heads)
    return qh @ kh.transpose(0, 2, 1)


def float_scores(x, wq, wk, bq=None, bk=None, *, heads: int, x_scale: float, wq_scale: float,
                 wk_scale: float) -> np.ndarray:
    """Float64 attention logits ``Q_h K_h^T / sqrt(d)`` of the dequantised inputs."""
    x, wq, wk, bq, bk = _check_inputs(x, wq, wk, bq, bk)
    xf = x * x_scale
    q = xf @ (wq * wq_scale) + bq * (x_scale * wq_scale)
    k = xf @ (wk * wk_scale) + bk * (x_scale * wk_scale)
    qh, kh = _heads_split(q, heads), _heads_split(k, heads)
    return qh @ kh.transpose(0, 2, 1) / math.sqrt(q.shape[1] // heads)


def float_attention(x, wq, wk, bq=None, bk=None, **kw) -> np.ndarray:
    """Float64 softmax attention probabilities (h x N x N)."""
    s = float_scores(x, wq, wk, bq, bk, **kw)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def topk_hit_rate(predicted, exact, k: int) -> float:
    """Mean over rows of ``|predicted top-k & exact top-k| / k`` (both tie-broken by index)."""
    p = row_topk(np.asarray(predicted, dtype=np.float64 if np.asarray(predicted).dtype == object
                            else None), k)
    e = row_topk(np.asarray(exact, dtype=np.float64 if np.asarray(exact).dtype == object
                            else None), k)
    n = np.asarray(predicted).shape[-1]
    pm = np.zeros(p.shape[:-1] + (n,), bool)
    em = np.zeros_like(pm)
    np.put_along_axis(pm, p, True, -1)
    np.put_along_axis(em, e, True, -1)
    return float((pm & em).sum(-1).mean() / k)
