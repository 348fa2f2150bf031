"""Golden models of ViTALiTy (Dass et al., HPCA 2023): first-order Taylor linear attention.

Three references, per head (Q, K, V: n x d):

* :func:`softmax_attention` -- float64 softmax attention, ``softmax(Q K^T / sqrt d) V``.
* :func:`taylor_attention` -- float64 first-order Taylor attention with key centring, as the
  paper writes it: ``z_i = (sqrt(d) v_sum + q_i G) / (n sqrt(d) + q_i . k^_sum)`` with
  ``K^ = K - 1 k_bar^T`` and ``G = K^^T V``.
* :func:`taylor_int` -- the bit-accurate integer model of the six hardware steps. The RTL in
  :mod:`vitaccel.rtl.vitality` matches it bit for bit.

Integer model (int8 Q, K, V; all rounding RHU and all narrowing saturating, from
:mod:`.fixedpoint`)::

    1  ksum[a]   = sum_i K[i,a]                                   signed 8 + clog2(n_max + 1) b
       kbar[a]   = div_round(ksum[a] << F, n)                     F = KBAR_FRAC fraction bits
       K^[i,a]   = (K[i,a] << F) - kbar[a]                        signed 9 + F = 15 b (F = 6)
    2  G[a,b]    = sum_i K^[i,a] V[i,b]                           exact, < 2**31 for n <= 256
       Gq[a,b]   = saturate(rshift_round(G[a,b], g_shift), 16)    16-bit operand for Q G
    3  khs[a]    = sum_i K^[i,a]  (a residue |khs| <= n/2 when centred), vsum[b] = sum_i V[i,b]
    4  t_D[i]    = n c_D + sum_a Q[i,a] khs[a]                    c_D = round(c 2**F)
    5  T_N[i,b]  = c_N vsum[b] + sum_a Q[i,a] Gq[a,b]             c_N = rshift_round(c_D, g_shift)
    6  clamped   = t_D <= 0;  t_D := 1 where clamped
       r[i]      = div_round(out_mult << R, t_D[i])  (unsigned, saturated to RECIP bits)
       z[i,b]    = saturate(rshift_round(T_N[i,b] r[i], R + out_shift), 8)

with ``c = sqrt(d) / (s_q s_k)`` the per-head constant and ``out_mult * 2**-out_shift`` the
16-bit representation of ``(s_v / s_out) 2**g_shift`` (:func:`.fixedpoint.quantize_multiplier`).
Derivation: in units of ``s_q s_k 2**-F`` the denominator is ``n c 2**F + Q K^ 1``; in units of
``s_q s_k s_v 2**(g_shift - F)`` the numerator is ``c 2**(F - g_shift) vsum + Q Gq``; so
``z / s_out = T_N / t_D * (s_v / s_out) 2**g_shift``.

Choices (the paper leaves them open):

* Step 6 divides once per row (``n`` divisions, not ``n d``): one reciprocal per row with ``R``
  fraction bits, then one multiply per output. ``R`` is chosen so that the reciprocal of the
  largest regular denominator, ``n_max c_D``, still has 16 significant bits.
* **constant t_D** (``constant_td=True``): ``k^_sum`` is mathematically zero, so ``t_D = n c_D``
  for every row: one division per head, no SA-Diag work. The general path keeps the residue.
* **t_D <= 0** (common with ``center_keys=False``, the ablation): the row is flagged in
  ``denominator_clamped`` and its denominator is clamped to 1, the smallest positive value, so the
  row's outputs saturate visibly instead of changing sign.
* ``center_keys=False`` sets ``kbar = 0``: ``K^ = K << F``; nothing else changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fixedpoint import (check_int_array, div_round, quantize_multiplier,
                         rshift_round, saturate)

__all__ = ["KBAR_FRAC", "ACC_BITS", "GQ_BITS", "OPERAND_BITS", "N_LIMIT", "Params",
           "derive_params", "softmax_attention", "taylor_attention", "taylor_int",
           "taylor_int_head", "softmax_macs", "taylor_macs"]

#: Fraction bits kept on k_bar (and so on K^): K^ is then 9 + 6 = 15 bits, one 16x16 DSP operand.
KBAR_FRAC = 6
#: Accumulator width of the systolic array (G and T_N partial sums).
ACC_BITS = 32
#: Width of the re-quantised G (the stationary operand of Q G).
GQ_BITS = 16
#: Width of both operands of a systolic-array PE (K^/Q streamed, V/Gq stationary).
OPERAND_BITS = 16
#: Largest supported n: keeps G below 2**31 with F = 6.
N_LIMIT = 256
#: Smallest allowed numerator constant c_N (its rounding error is below 1 / (2 * 16) = 3 %).
MIN_C_N = 16


def _bits_unsigned(x: int) -> int:
    return max(int(x).bit_length(), 1)


def _bits_signed(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding [lo, hi]."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


@dataclass(frozen=True)
class Params:
    """Every integer constant and width of the datapath, derived once from a unit Config."""
    d: int
    n_max: int
    center_keys: bool
    constant_td: bool
    g_shift: int
    c: float            # the real per-head constant sqrt(d) / (s_q s_k)
    c_d: int            # denominator constant, c 2**F rounded
    c_n: int            # numerator constant, c_D >> g_shift rounded
    out_mult: int       # (s_v / s_out) 2**g_shift = out_mult * 2**-out_shift
    out_shift: int
    recip_frac: int     # R
    recip_bits: int     # unsigned width of the per-row reciprocal
    ksum_bits: int
    kbar_bits: int
    khat_bits: int
    khs_bits: int
    vsum_bits: int
    td_bits: int

    @property
    def total_shift(self) -> int:
        return self.recip_frac + self.out_shift


def derive_params(d: int, n_max: int, q_scale: float, k_scale: float, v_scale: float,
                  out_scale: float, g_shift: int, center_keys: bool = True,
                  constant_td: bool = False, owner: str = "Config") -> Params:
    """Integer constants and widths; ``ValueError`` naming the offending field otherwise."""
    for name, s in (("q_scale", q_scale), ("k_scale", k_scale), ("v_scale", v_scale),
                    ("out_scale", out_scale)):
        if (isinstance(s, bool) or not isinstance(s, (int, float))
                or not (math.isfinite(s) and s > 0)):
            raise ValueError(f"{owner}.{name} must be a positive finite number, got {s!r}")
    F = KBAR_FRAC
    c = math.sqrt(d) / (q_scale * k_scale)
    if c * (1 << F) > 2.0 ** 40:
        raise ValueError(f"{owner}.q_scale * {owner}.k_scale = {q_scale * k_scale:.3g} is too "
                         f"small: c = sqrt(d)/(s_q s_k) = {c:.4g} exceeds 2**34")
    c_d = int(math.floor(c * (1 << F) + 0.5))
    c_n = rshift_round(c_d, g_shift)
    if c_n < MIN_C_N:
        raise ValueError(
            f"{owner}.q_scale * {owner}.k_scale = {q_scale * k_scale:.3g} is too large for "
            f"g_shift = {g_shift}: the numerator constant c 2**(6 - g_shift) = {c_n} must be >= "
            f"{MIN_C_N} (use smaller q_scale/k_scale or a smaller g_shift)")
    # T_N must fit the 32-bit accumulator: |c_N vsum| + d |Q| |Gq|.
    tn_max = c_n * n_max * 128 + d * 128 * (1 << (GQ_BITS - 1))
    if tn_max > (1 << (ACC_BITS - 1)) - 1:
        raise ValueError(
            f"{owner}.q_scale * {owner}.k_scale = {q_scale * k_scale:.3g} is too small for "
            f"n_max = {n_max}, d = {d}, g_shift = {g_shift}: the numerator c_N vsum + Q Gq could "
            f"reach {tn_max} > 2**31 - 1 (use larger q_scale/k_scale or a larger g_shift)")
    try:
        rq = quantize_multiplier((v_scale / out_scale) * 2.0 ** g_shift)
    except ValueError as e:
        raise ValueError(f"{owner}.v_scale / {owner}.out_scale = {v_scale / out_scale:.3g} is "
                         f"out of range: {e}") from None
    recip_frac = _bits_unsigned(n_max * c_d)
    # The reciprocal of n c_D for n = 2 is about 2**(16 + R) / (2 c_D) ~ n_max 2**15: one bit more.
    recip_bits = 16 + _bits_unsigned(n_max) + 1
    if recip_frac + rq.shift > 63:
        raise ValueError(f"{owner}.v_scale / {owner}.out_scale = {v_scale / out_scale:.3g} needs "
                         f"a total output shift of {recip_frac + rq.shift} > 63")
    ksum_hi = n_max * 128
    kbar_hi = 128 << F
    khat_hi = 255 << F
    khs_hi = n_max * khat_hi
    td_hi = n_max * c_d + d * 128 * khs_hi
    return Params(
        d=d, n_max=n_max, center_keys=bool(center_keys), constant_td=bool(constant_td),
        g_shift=g_shift, c=c, c_d=c_d, c_n=c_n, out_mult=rq.multiplier, out_shift=rq.shift,
        recip_frac=recip_frac, recip_bits=recip_bits,
        ksum_bits=_bits_signed(-ksum_hi, ksum_hi), kbar_bits=_bits_signed(-kbar_hi, kbar_hi),
        khat_bits=_bits_signed(-khat_hi, khat_hi), khs_bits=_bits_signed(-khs_hi, khs_hi),
        vsum_bits=_bits_signed(-ksum_hi, ksum_hi), td_bits=_bits_signed(-td_hi, td_hi),
    )


# --- float references -------------------------------------------------------------------------

def _heads(x):
    x = np.asarray(x, dtype=np.float64)
    return x[None] if x.ndim == 2 else x


def softmax_attention(q, k, v) -> np.ndarray:
    """``softmax(Q K^T / sqrt d) V`` per head, float64; inputs n x d or h x n x d."""
    q, k, v = _heads(q), _heads(k), _heads(v)
    d = q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v


def taylor_attention(q, k, v, center_keys: bool = True):
    """First-order Taylor attention as the paper writes it. Returns ``(z, denominator)``.

    ``z_i = (sqrt(d) v_sum + q_i G) / (n sqrt(d) + q_i . k^_sum)``, ``G = K^^T V``; with
    ``center_keys`` the keys are centred over tokens first. Rows whose denominator is <= 0 give
    whatever the division gives (the integer model flags and clamps them).
    """
    q, k, v = _heads(q), _heads(k), _heads(v)
    n, d = q.shape[-2], q.shape[-1]
    kh = k - k.mean(axis=-2, keepdims=True) if center_keys else k
    g = np.swapaxes(kh, -1, -2) @ v                       # d x d
    num = math.sqrt(d) * v.sum(axis=-2, keepdims=True) + q @ g
    den = n * math.sqrt(d) + q @ kh.sum(axis=-2)[..., :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den, den[..., 0]


# --- the integer model ------------------------------------------------------------------------

def taylor_int_head(q, k, v, p: Params, trace: bool = False) -> dict:
    """One head of the integer model (q, k, v: n x d int arrays). With ``trace`` every
    intermediate of the six steps is returned too."""
    n = q.shape[0]
    F = KBAR_FRAC
    q, k, v = (np.asarray(x, dtype=np.int64) for x in (q, k, v))
    # step 1: column sums, single-divisor divide, centring
    ksum = k.sum(axis=0)
    if p.center_keys:
        kbar, _ = div_round(ksum << F, n, out_bits=p.kbar_bits)
        kbar = np.asarray(kbar, dtype=np.int64)
    else:
        kbar = np.zeros(p.d, dtype=np.int64)
    khat = (k << F) - kbar[None, :]
    # step 2: G = K^^T V, re-quantised to 16 bits for Q G
    g = khat.T @ v
    gq = np.asarray(saturate(rshift_round(g, p.g_shift), GQ_BITS), dtype=np.int64)
    # step 3: k^_sum and v_sum
    khs = khat.sum(axis=0)
    vsum = v.sum(axis=0)
    # step 4: denominators
    if p.constant_td:
        td = np.full(n, n * p.c_d, dtype=np.int64)
    else:
        td = n * p.c_d + q @ khs
    clamped = td <= 0
    td_c = np.where(clamped, 1, td)
    # step 5: numerators
    tn = p.c_n * vsum[None, :] + q @ gq
    # step 6: one reciprocal per row, one multiply per output
    recip, _ = div_round(np.full(n, p.out_mult << p.recip_frac, dtype=np.int64), td_c,
                         out_bits=p.recip_bits, signed=False)
    recip = np.asarray(recip, dtype=np.int64)
    z = np.asarray(saturate(rshift_round(tn * recip[:, None], p.total_shift), 8), dtype=np.int64)
    out = {"z": z.astype(np.int8), "denominator_clamped": clamped}
    if trace:
        out.update(ksum=ksum, kbar=kbar, khat=khat, g=g, gq=gq, khat_sum=khs, vsum=vsum, td=td,
                   tn=tn, recip=recip,
                   g_saturated=int(np.count_nonzero(gq != rshift_round(g, p.g_shift))))
    return out


def taylor_int(q, k, v, p: Params) -> dict:
    """The integer model on h x n x d int8 inputs: ``{"z": h x n x d int8,
    "denominator_clamped": h x n bool}``."""
    q = check_int_array("q", q, 8, ndim=3)
    k = check_int_array("k", k, 8, ndim=3, shape=q.shape)
    v = check_int_array("v", v, 8, ndim=3, shape=q.shape)
    heads = [taylor_int_head(q[h], k[h], v[h], p) for h in range(q.shape[0])]
    return {"z": np.stack([o["z"] for o in heads]),
            "denominator_clamped": np.stack([o["denominator_clamped"] for o in heads])}


# --- cost model -------------------------------------------------------------------------------

def taylor_macs(n: int, d: int) -> int:
    """MACs of Taylor attention per head: G and Q G (2 n d^2) plus Q k^_sum (n d)."""
    return 2 * n * d * d + n * d


def softmax_macs(n: int, d: int) -> int:
    """MACs of softmax attention per head: Q K^T and A V (2 n^2 d)."""
    return 2 * n * n * d
