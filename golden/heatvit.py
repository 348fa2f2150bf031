"""HeatViT adaptive token selector: weights, a float reference and the bit-accurate integer model.

Spec: ``specs/heatvit.md`` (the released SPViT code, ``MultiheadPredictorLG``). The integer model
below is what the RTL in :mod:`vitaccel.rtl.heatvit` computes, bit for bit; the float reference is
"dequantise the inputs (tokens and int8 weights), compute in float64 with exact LayerNorm, GELU
(erf) and sigmoid".

Shapes and names
----------------
``tokens`` is (N+1) x D int8 at ``cfg.x_scale``, row 0 = CLS (never enters the selector, always
kept). ``h`` heads of ``d = D/h`` channels. ``has_package``: row N is a package token made by an
earlier selector; it is always packed again (never kept) **[spec choice]**.

Integer pipeline (per token t >= 1, per head i; all shifts/divisions RHU, all narrowing saturates)
-------------------------------------------------------------------------------------------------
1. LayerNorm over the head's ``d`` channels, affine folded into W1 (``W1' = W1 diag(gamma)``,
   ``b1' = W1 beta + b1``, done by :func:`from_state_dict`, so the hardware only normalises)::

       s = sum x, q = sum x^2, S = d*q - s^2      (= d^2 * variance, exact)
       v = S + E,  E = max(1, round(d^2 * eps / x_scale^2))     (eps in integer units)
       r = isqrt(div_round(2^(2*LN_R), v))         (= floor(2^LN_R / sqrt(v)) up to the div rounding)
       y_j = sat8(rshift_round((d*x_j - s) * r, LN_R - LN_Y))   LN output, scale 2^-LN_Y

   ``r`` comes from the shared divider plus a bit-serial integer square root: no table, no float.
   e_t[i] = rshift_round(s, log2 d) is the head mean for the importance branch (d is a power of
   two **[choice]**, so the mean is a shift).
2. ``u = GELU_q(y @ W1'^T + b1')`` (int8 at ``u_scale``); ``l = u[:d/2]``.
3. Global half: ``g^i = sat8(rshift_round(sum_t u_t^i[d/2:] * rN, RN_FRAC))``, ``rN =
   reciprocal(N, RN_FRAC)`` (one reciprocal per image instead of d/2*h divisions), then the per-head
   int32 bias ``bias2^i = W2[:, d/2:] @ g^i + b2`` (bit-exact with concatenating [l; g]).
4. ``a2 = GELU_q(l @ W2[:, :d/2]^T + bias2^i)``, ``a3 = GELU_q(a2 @ W3^T + b3)``,
   ``z = a3 @ W4^T + b4`` (int32), ``dz_i = requantize(z0 - z1)`` to int16 Q8 (``LOGIT_FRAC``).
5. Head importance: ``w = SIG_q(requantize(GELU_q(e @ V1^T + c1) @ V2^T + c2))`` in Q8, 0..256.
6. Decision. ``"logit"`` (default): keep iff ``sum_i w_i * dz_i > 0``. ``"prob"``: with
   ``p_i = SIG_q(dz_i)``, keep iff ``2*sum w_i p_i >= 256*sum w_i`` (``sum w_i == 0``: iff
   ``2*sum p_i >= 256*h``). Exact integer comparisons, no divider.
7. Keep score ``pi = div_round(sum_i w_i p_i, sum_i w_i)`` in Q8 (``sum w == 0``:
   ``div_round(sum_i p_i, h)``). Package over the dropped tokens (and an incoming package):
   ``acc_c = sum_j pi_j x_jc``, ``den = sum_j pi_j``; with normalisation
   ``pkg_c = sat8(rshift_round(acc_c * reciprocal(den, PKG_FRAC), PKG_FRAC))``; when ``den == 0``
   the plain mean (``pi_j := 1`` for all dropped j); without normalisation
   ``pkg_c = sat8(rshift_round(acc_c, 8))`` (a pi-weighted sum, as one released script trains).
8. Output ``[CLS, kept tokens in order, package if any token was dropped]``, ``n_next``, ``keep``.

``GELU_q`` (I-BERT's polynomial with HeatViT's delta1) on an int32 accumulator at scale ``s``::

    x  = requantize(acc, quantize_multiplier(s * 2^GELU_X), 16 bit)      Q10 input
    t  = min(rshift_round(|x| * 23170, 15), 1811)         |x|/sqrt2 clipped at -b = 1.769 (Q10)
    L  = sgn(x) * (rshift_round(A * (t - 1811)^2, 20) + ONE)       A = round(delta1*a*2^14),
                                                                    ONE = round(delta1*2^14)
    out = requantize(x * (2^14 + L), quantize_multiplier(2^-25 / out_scale), 8 bit)

``SIG_q`` (PLAN, shift-only) on a Q8 int16 ``x``, result Q8 in [0, 256]: ``|x| >= 5 -> 256``,
``[2.375, 5) -> |x|/32 + 216``, ``[1, 2.375) -> |x|/8 + 160``, ``[0, 1) -> |x|/4 + 128``, negative
``-> 256 - y`` (shifts RHU). ``sigmoid="hard"``: ``clip(x/4 + 128, 0, 256)``.

Weights
-------
:class:`Weights` holds int8 tensors in PyTorch (out, in) order, stacked over heads (leading axis 1
when shared, h when per-head), int32 biases at the accumulator scale of their layer, and one float
scale per tensor (``*_scale``, the per-tensor symmetric scale ``max|w| / 127``). ``.npz`` names are
the field names (:data:`WEIGHT_FIELDS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .fixedpoint import (check_int_array, div_round, quantize_multiplier, reciprocal, requantize,
                         rshift_round, saturate, Requant)

__all__ = ["Params", "Weights", "WEIGHT_FIELDS", "random_weights", "from_state_dict",
           "load_weights", "save_weights", "derive", "gelu_q", "sigmoid_q", "layernorm_q",
           "isqrt", "inv_sqrt", "selector_int", "selector_float", "gelu_float", "gelu_constants",
           "quantize_tensor", "quantize_bias"]

# Fixed-point formats of the internal signals (fractional bits).
LN_R = 22          # inverse square root r = 2^LN_R / sqrt(v)
LN_Y = 4           # LayerNorm output y (|y| <= sqrt(d-1) < 8 for d <= 64 fits int8 Q4)
GELU_X = 10        # GELU input, int16
LOGIT_FRAC = 8     # logit differences and sigmoid inputs, int16 Q8
PROB_ONE = 256     # sigmoid output / keep score / head weight: Q8, 0..256
RN_FRAC = 16       # reciprocal of N for the global mean
PKG_FRAC = 24      # reciprocal of the package denominator
GELU_A, GELU_B = -0.2888, -1.769
INV_SQRT2_Q15 = 23170              # round(2^15 / sqrt 2)
GELU_CLIP = 1811                   # round(1.769 * 2^10)


# ------------------------------------------------------------------------------------------------
# parameters derived from the config (and the weight scales) once
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """Everything integer the datapath needs, derived once from a config and the weight scales."""
    D: int
    heads: int
    d: int
    log2_d: int
    ln_eps_int: int
    gelu_a: int
    gelu_one: int
    rq_gelu1_in: Requant
    rq_gelu1_out: Requant
    rq_gelu2_in: Requant
    rq_gelu2_out: Requant
    rq_gelu3_in: Requant
    rq_gelu3_out: Requant
    rq_logit: Requant
    rq_geluh_in: Requant
    rq_geluh_out: Requant
    rq_head_logit: Requant
    decision: str
    normalize_package: bool
    sigmoid: str


def gelu_constants(delta: float = 1.0) -> tuple[int, int]:
    """``(A, ONE)`` of :func:`gelu_q` for HeatViT's delta1 (1 = plain I-BERT GELU)."""
    return int(round(delta * GELU_A * 2 ** 14)), int(round(delta * 2 ** 14))


def derive(cfg, w: "Weights") -> Params:
    """Integer constants from ``cfg`` (activation scales, eps, delta1) and ``w`` (weight scales)."""
    d = cfg.D // cfg.heads
    ln_scale = 2.0 ** -LN_Y
    acc1 = ln_scale * w.w1_scale
    acc2 = cfg.u_scale * w.w2_scale
    acc3 = cfg.a2_scale * w.w3_scale
    acc4 = cfg.a3_scale * w.w4_scale
    acch1 = cfg.x_scale * w.v1_scale
    acch2 = cfg.hb_scale * w.v2_scale
    out_real = 2.0 ** -(GELU_X + 14 + 1)
    return Params(
        D=cfg.D, heads=cfg.heads, d=d, log2_d=d.bit_length() - 1,
        ln_eps_int=max(1, int(round(d * d * cfg.ln_eps / cfg.x_scale ** 2))),
        gelu_a=gelu_constants(cfg.gelu_delta)[0], gelu_one=gelu_constants(cfg.gelu_delta)[1],
        rq_gelu1_in=quantize_multiplier(acc1 * 2 ** GELU_X),
        rq_gelu1_out=quantize_multiplier(out_real / cfg.u_scale),
        rq_gelu2_in=quantize_multiplier(acc2 * 2 ** GELU_X),
        rq_gelu2_out=quantize_multiplier(out_real / cfg.a2_scale),
        rq_gelu3_in=quantize_multiplier(acc3 * 2 ** GELU_X),
        rq_gelu3_out=quantize_multiplier(out_real / cfg.a3_scale),
        rq_logit=quantize_multiplier(acc4 * 2 ** LOGIT_FRAC),
        rq_geluh_in=quantize_multiplier(acch1 * 2 ** GELU_X),
        rq_geluh_out=quantize_multiplier(out_real / cfg.hb_scale),
        rq_head_logit=quantize_multiplier(acch2 * 2 ** LOGIT_FRAC),
        decision=cfg.decision, normalize_package=cfg.normalize_package, sigmoid=cfg.sigmoid,
    )


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------
WEIGHT_FIELDS = ("w1", "b1", "w2", "b2", "w3", "b3", "w4", "b4", "v1", "c1", "v2", "c2")
_SCALE_FIELDS = ("w1_scale", "w2_scale", "w3_scale", "w4_scale", "v1_scale", "v2_scale")


@dataclass(frozen=True)
class Weights:
    """int8 selector weights (PyTorch (out, in) order), int32 biases, per-tensor float scales.

    Per-head tensors carry a leading head axis: 1 when the heads share weights, h otherwise.
    ``w1``/``b1`` already hold the LayerNorm affine (``W1 diag(gamma)``, ``W1 beta + b1``).
    Bias scales: b1 ``2^-LN_Y*w1_scale``, b2 ``u_scale*w2_scale``, b3 ``a2_scale*w3_scale``,
    b4 ``a3_scale*w4_scale``, c1 ``x_scale*v1_scale``, c2 ``hb_scale*v2_scale``.
    """
    w1: np.ndarray   # (H, d, d)
    b1: np.ndarray   # (H, d)
    w2: np.ndarray   # (H, d/2, d)
    b2: np.ndarray   # (H, d/2)
    w3: np.ndarray   # (H, d/4, d/2)
    b3: np.ndarray   # (H, d/4)
    w4: np.ndarray   # (H, 2, d/4)
    b4: np.ndarray   # (H, 2)
    v1: np.ndarray   # (h//2, h)
    c1: np.ndarray   # (h//2,)
    v2: np.ndarray   # (h, h//2)
    c2: np.ndarray   # (h,)
    w1_scale: float = 1.0
    w2_scale: float = 1.0
    w3_scale: float = 1.0
    w4_scale: float = 1.0
    v1_scale: float = 1.0
    v2_scale: float = 1.0

    @property
    def shared(self) -> bool:
        return self.w1.shape[0] == 1

    def check(self, cfg) -> "Weights":
        """Validate shapes and ranges against ``cfg``; ``ValueError`` naming the tensor."""
        h, d = cfg.heads, cfg.D // cfg.heads
        hh = 1 if cfg.shared_weights else h
        want = {"w1": (hh, d, d), "b1": (hh, d), "w2": (hh, d // 2, d), "b2": (hh, d // 2),
                "w3": (hh, d // 4, d // 2), "b3": (hh, d // 4), "w4": (hh, 2, d // 4),
                "b4": (hh, 2), "v1": (h // 2, h), "c1": (h // 2,), "v2": (h, h // 2),
                "c2": (h,)}
        for name, shape in want.items():
            a = np.asarray(getattr(self, name))
            if a.shape != shape:
                mode = "shared" if cfg.shared_weights else "per-head"
                raise ValueError(f"weights.{name}: expected shape {shape} for D={cfg.D}, "
                                 f"heads={h} ({mode} weights), got {a.shape}")
            check_int_array(f"weights.{name}", a, 32 if name[0] in "bc" else 8)
        for name in _SCALE_FIELDS:
            s = getattr(self, name)
            if not (isinstance(s, (float, int, np.floating)) and math.isfinite(s) and s > 0):
                raise ValueError(f"weights.{name} must be a positive finite float, got {s!r}")
        return self

    def head(self, name: str, i: int) -> np.ndarray:
        """The tensor ``name`` used by head ``i`` (shared weights: the single copy)."""
        a = getattr(self, name)
        return a[0 if a.shape[0] == 1 else i]


def quantize_tensor(w: np.ndarray):
    """Symmetric per-tensor int8: scale = max|w| / 127 (1.0 for an all-zero tensor)."""
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    q = np.clip(np.floor(w / scale + 0.5), -127, 127).astype(np.int8)   # RHU
    return q, scale


def quantize_bias(b: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.floor(b / scale + 0.5), -(2 ** 31), 2 ** 31 - 1).astype(np.int64)


def _quantize(cfg, f: dict) -> Weights:
    """Float tensors (stacked per head, LN folded) -> :class:`Weights`."""
    q = {}
    scales = {}
    for name in ("w1", "w2", "w3", "w4", "v1", "v2"):
        q[name], scales[name + "_scale"] = quantize_tensor(np.asarray(f[name], dtype=np.float64))
    bias_scale = {"b1": 2.0 ** -LN_Y * scales["w1_scale"], "b2": cfg.u_scale * scales["w2_scale"],
                  "b3": cfg.a2_scale * scales["w3_scale"], "b4": cfg.a3_scale * scales["w4_scale"],
                  "c1": cfg.x_scale * scales["v1_scale"], "c2": cfg.hb_scale * scales["v2_scale"]}
    for name, s in bias_scale.items():
        q[name] = quantize_bias(np.asarray(f[name], dtype=np.float64), s)
    return Weights(**q, **scales).check(cfg)


def random_weights(cfg, seed: int = 0, gain: float = 3.0) -> Weights:
    """Random float selector weights, quantised; deterministic in ``seed``.

    Uniform init with bound ``gain / sqrt(fan_in)`` (PyTorch's default is gain 1; an untrained
    predictor at gain 1 keeps every token, gain 3 gives logits that spread across the decision
    boundary, which is what tests and demos need), gamma ~ 1, beta ~ 0, b4 = 0.
    """
    rng = np.random.default_rng(seed)
    h, d = cfg.heads, cfg.D // cfg.heads
    hh = 1 if cfg.shared_weights else h

    def lin(out, inp, lead=()):
        bound = gain / math.sqrt(inp)
        return (rng.uniform(-bound, bound, lead + (out, inp)),
                rng.uniform(-bound / gain, bound / gain, lead + (out,)))

    gamma = 1.0 + 0.1 * rng.standard_normal((hh, d))
    beta = 0.1 * rng.standard_normal((hh, d))
    w1, b1 = lin(d, d, (hh,))
    w2, b2 = lin(d // 2, d, (hh,))
    w3, b3 = lin(d // 4, d // 2, (hh,))
    w4, b4 = lin(2, d // 4, (hh,))
    b4 = np.zeros_like(b4)
    v1, c1 = lin(h // 2, h)
    v2, c2 = lin(h, h // 2)
    return _quantize(cfg, _fold_ln(dict(w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3, w4=w4, b4=b4,
                                        v1=v1, c1=c1, v2=v2, c2=c2), gamma, beta))


def _fold_ln(f: dict, gamma, beta) -> dict:
    """``W1 (gamma*y + beta) + b1 = (W1 diag gamma) y + (W1 beta + b1)``, per head."""
    f = dict(f)
    w1 = np.asarray(f["w1"], dtype=np.float64)
    f["b1"] = np.asarray(f["b1"], dtype=np.float64) + np.einsum("hoi,hi->ho", w1, beta)
    f["w1"] = w1 * np.asarray(gamma)[:, None, :]
    return f


def from_state_dict(cfg, state_dict: dict, stage: int = 0) -> Weights:
    """Quantise a released-checkpoint predictor (float arrays under the SPViT parameter names).

    Keys may carry the ``score_predictor.{stage}.`` prefix or not. With ``cfg.shared_weights``
    head 0's tensors are used (the released code reuses one module for every head).
    """
    prefix = f"score_predictor.{stage}."
    sd = {}
    for key, value in state_dict.items():
        if key.startswith("score_predictor."):
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        sd[key] = np.asarray(value, dtype=np.float64)

    def get(key):
        if key not in sd:
            raise ValueError(f"state_dict has no {key!r} (with or without the {prefix!r} prefix)")
        return sd[key]

    h = cfg.heads
    heads = [0] if cfg.shared_weights else list(range(h))
    stack = lambda k: np.stack([get(k.format(i=i)) for i in heads])  # noqa: E731
    f = dict(w1=stack("in_conv.{i}.1.weight"), b1=stack("in_conv.{i}.1.bias"),
             w2=stack("out_conv.{i}.0.weight"), b2=stack("out_conv.{i}.0.bias"),
             w3=stack("out_conv.{i}.2.weight"), b3=stack("out_conv.{i}.2.bias"),
             w4=stack("out_conv.{i}.4.weight"), b4=stack("out_conv.{i}.4.bias"),
             v1=get("senet.0.weight"), c1=get("senet.0.bias"),
             v2=get("senet.2.weight"), c2=get("senet.2.bias"))
    gamma, beta = stack("in_conv.{i}.0.weight"), stack("in_conv.{i}.0.bias")
    d = cfg.D // h
    if gamma.shape != (len(heads), d):
        raise ValueError(f"state_dict in_conv.*.0.weight: expected LayerNorm({d}), "
                         f"got shape {gamma.shape[1:]}")
    try:
        folded = _fold_ln(f, gamma, beta)
    except ValueError as exc:
        raise ValueError(f"state_dict: tensor shapes do not match D={cfg.D}, heads={h}: {exc}")
    return _quantize(cfg, folded)


def save_weights(path, w: Weights):
    """Write ``w`` as ``.npz`` under the field names (:data:`WEIGHT_FIELDS` and ``*_scale``)."""
    np.savez(path, **{f.name: np.asarray(getattr(w, f.name)) for f in fields(w)})


def load_weights(path, cfg=None) -> Weights:
    """Read a ``.npz`` written by :func:`save_weights`; validated against ``cfg`` if given."""
    with np.load(Path(path)) as z:
        missing = [f.name for f in fields(Weights) if f.name not in z.files]
        if missing:
            raise ValueError(f"{path}: missing weight arrays {missing}")
        kw = {f.name: (float(z[f.name]) if f.name.endswith("_scale") else z[f.name].astype(np.int64))
              for f in fields(Weights)}
    w = Weights(**kw)
    return w.check(cfg) if cfg is not None else w


# ------------------------------------------------------------------------------------------------
# integer building blocks (each is one RTL block)
# ------------------------------------------------------------------------------------------------
def isqrt(x):
    """floor(sqrt(x)) of non-negative integers (the RTL's bit-serial square root)."""
    a = np.asarray(x, dtype=object)
    return np.vectorize(lambda v: math.isqrt(int(v)), otypes=[object])(a).astype(np.int64)


def inv_sqrt(v):
    """``isqrt(div_round(2^(2 LN_R), v))`` for v >= 1: about ``2^LN_R / sqrt(v)``."""
    q, _ = div_round(np.full(np.shape(v), 1 << (2 * LN_R), dtype=object), np.asarray(v, dtype=object),
                     out_bits=2 * LN_R + 1, signed=False)
    return isqrt(q)


def layernorm_q(x, d: int, eps_int: int, y_frac: int = LN_Y):
    """Per-group-of-``d`` integer LayerNorm of int8 ``x`` (..., k*d): returns (y int8 with
    ``y_frac`` fraction bits (Q4, the selector's, by default), group sums s, inverse square roots
    r). |y| <= sqrt(d - 1), so Q4 never saturates for d <= 64; finer formats saturate the rare
    outliers (the ViT's block LayerNorms use them: see :mod:`vitaccel.model.quant`)."""
    x = np.asarray(x, dtype=np.int64)
    g = x.reshape(x.shape[:-1] + (x.shape[-1] // d, d))
    s = g.sum(-1)
    q = (g * g).sum(-1)
    v = d * q - s * s + eps_int
    r = inv_sqrt(v)
    c = d * g - s[..., None]
    y = saturate(rshift_round(c * r[..., None], LN_R - y_frac), 8)
    return y.reshape(x.shape), s, r


def gelu_q(acc, rq_in: Requant, rq_out: Requant, a: int, one: int):
    """I-BERT integer GELU with HeatViT's delta1 folded into ``a`` and ``one`` (see module doc)."""
    x = requantize(acc, rq_in, 16)
    ax = np.abs(x)
    t = np.minimum(rshift_round(ax * INV_SQRT2_Q15, 15), GELU_CLIP)
    p = t - GELU_CLIP
    lmag = rshift_round(a * p * p, 20) + one
    el = np.sign(x) * lmag
    return requantize(x * ((1 << 14) + el), rq_out, 8)


def sigmoid_q(x, kind: str = "plan"):
    """Shift-only sigmoid of a Q8 int16 input, Q8 output in [0, 256]."""
    x = np.asarray(x, dtype=np.int64)
    if kind == "hard":
        return np.clip(rshift_round(x, 2) + 128, 0, 256)
    ax = np.abs(x)
    y = np.where(ax >= 5 * 256, 256,
                 np.where(ax >= 608, rshift_round(ax, 5) + 216,            # 2.375 * 256 = 608
                          np.where(ax >= 256, rshift_round(ax, 3) + 160, rshift_round(ax, 2) + 128)))
    return np.where(x < 0, 256 - y, y)


# ------------------------------------------------------------------------------------------------
# the integer selector
# ------------------------------------------------------------------------------------------------
def _linear(a, w, b):
    """int8 activations (rows, in) @ int8 (out, in)^T + int32 bias -> exact integer accumulators."""
    return np.asarray(a, np.int64) @ np.asarray(w, np.int64).T + np.asarray(b, np.int64)


def selector_int(p: Params, w: Weights, tokens: np.ndarray, has_package: bool = False,
                 trace: dict | None = None) -> dict:
    """The bit-accurate integer selector. ``tokens`` (N+1, D) int64 already validated.

    Returns ``tokens_out`` ((n_next, D) int8 values as int64), ``keep`` (N bools), ``n_next``.
    ``trace`` (a dict) receives the intermediate integer signals, for block tests.
    """
    h, d = p.heads, p.d
    x = tokens[1:]                       # (N, D) candidates
    n = x.shape[0]
    gelu = lambda acc, ri, ro: gelu_q(acc, ri, ro, p.gelu_a, p.gelu_one)  # noqa: E731

    y, s, _ = layernorm_q(x, d, p.ln_eps_int)                 # y (N, D), s (N, h)
    e = rshift_round(s, p.log2_d)                              # head means, int8 at x_scale
    y = y.reshape(n, h, d)
    rn, _ = reciprocal(n, RN_FRAC)
    dz = np.zeros((n, h), dtype=np.int64)
    u_all = np.zeros((n, h, d), dtype=np.int64)
    for i in range(h):
        u = gelu(_linear(y[:, i], w.head("w1", i), w.head("b1", i)), p.rq_gelu1_in, p.rq_gelu1_out)
        u_all[:, i] = u
        g = saturate(rshift_round(u[:, d // 2:].sum(0) * rn, RN_FRAC), 8)
        w2 = w.head("w2", i)
        bias2 = _linear(g[None, :], w2[:, d // 2:], w.head("b2", i))[0]
        a2 = gelu(_linear(u[:, :d // 2], w2[:, :d // 2], bias2), p.rq_gelu2_in, p.rq_gelu2_out)
        a3 = gelu(_linear(a2, w.head("w3", i), w.head("b3", i)), p.rq_gelu3_in, p.rq_gelu3_out)
        z = _linear(a3, w.head("w4", i), w.head("b4", i))
        dz[:, i] = requantize(z[:, 0] - z[:, 1], p.rq_logit, 16)
    eh = gelu(_linear(e, w.v1, w.c1), p.rq_geluh_in, p.rq_geluh_out)
    hw = sigmoid_q(requantize(_linear(eh, w.v2, w.c2), p.rq_head_logit, 16), p.sigmoid)  # (N, h)
    prob = sigmoid_q(dz, p.sigmoid)

    wsum = hw.sum(1)
    wp = (hw * prob).sum(1)
    if p.decision == "logit":
        keep = (hw * dz).sum(1) > 0
    else:
        keep = np.where(wsum > 0, 2 * wp >= PROB_ONE * wsum, 2 * prob.sum(1) >= PROB_ONE * h)
    if trace is not None:
        trace.update(y=y, s=s, e=e, u=u_all, dz=dz, head_w=hw, prob=prob)
    keep = keep.astype(bool)
    if has_package:
        keep[-1] = False
    pi = np.where(wsum > 0, div_round(wp, np.maximum(wsum, 0))[0],
                  div_round(prob.sum(1), np.full(n, h))[0])
    rows = [tokens[0]] + [x[j] for j in range(n) if keep[j]]
    dropped = ~keep
    if dropped.any():
        pj = pi[dropped]
        den = int(pj.sum())
        if den == 0:
            pj = np.ones_like(pj)
            den = len(pj)
        acc = (pj[:, None] * x[dropped]).sum(0)
        if p.normalize_package:
            r, _ = reciprocal(den, PKG_FRAC)
            pkg = saturate(rshift_round(acc * r, PKG_FRAC), 8)
        else:
            pkg = saturate(rshift_round(acc, 8), 8)
        rows.append(pkg)
        if trace is not None:
            trace.update(pi=pi, pkg_acc=acc, pkg_den=den)
    out = np.array(rows, dtype=np.int64).reshape(len(rows), p.D)
    return {"tokens_out": out, "keep": keep, "n_next": len(rows)}


# ------------------------------------------------------------------------------------------------
# the float reference
# ------------------------------------------------------------------------------------------------
def gelu_float(x):
    from math import erf
    return 0.5 * x * (1.0 + np.vectorize(erf)(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def selector_float(cfg, w: Weights, tokens: np.ndarray, has_package: bool = False) -> dict:
    """Dequantise tokens and weights, compute in float64 (exact LN, erf GELU, logistic sigmoid).

    Returns ``tokens_out`` (float, real units), ``keep``, ``n_next``, ``margin`` (the decision
    quantity per token: weighted logit difference or mean keep probability - 0.5) and ``pi``.
    """
    h, d = cfg.heads, cfg.D // cfg.heads
    xs = cfg.x_scale
    x = np.asarray(tokens, np.float64)[1:] * xs
    n = x.shape[0]
    xh = x.reshape(n, h, d)
    mu = xh.mean(-1)
    var = xh.var(-1)
    ln = (xh - mu[..., None]) / np.sqrt(var[..., None] + cfg.ln_eps)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    deq = lambda name, i=None: (np.asarray(w.head(name, i) if i is not None else getattr(w, name),  # noqa: E731
                                           np.float64) * getattr(w, name + "_scale"))
    b1s = 2.0 ** -LN_Y * w.w1_scale
    dzs = np.zeros((n, h))
    for i in range(h):
        u = gelu_float(ln[:, i] @ deq("w1", i).T + w.head("b1", i) * b1s)
        g = u[:, d // 2:].mean(0)
        cat = np.concatenate([u[:, :d // 2], np.broadcast_to(g, (n, d // 2))], axis=1)
        a2 = gelu_float(cat @ deq("w2", i).T + w.head("b2", i) * cfg.u_scale * w.w2_scale)
        a3 = gelu_float(a2 @ deq("w3", i).T + w.head("b3", i) * cfg.a2_scale * w.w3_scale)
        z = a3 @ deq("w4", i).T + w.head("b4", i) * cfg.a3_scale * w.w4_scale
        dzs[:, i] = z[:, 0] - z[:, 1]
    eh = gelu_float(mu @ deq("v1").T + w.c1 * cfg.x_scale * w.v1_scale)
    hw = sig(eh @ deq("v2").T + w.c2 * cfg.hb_scale * w.v2_scale)
    prob = sig(dzs)
    wsum = hw.sum(1)
    if cfg.decision == "logit":
        margin = (hw * dzs).sum(1)
    else:
        margin = (hw * prob).sum(1) / wsum - 0.5
    keep = margin > 0 if cfg.decision == "logit" else margin >= 0
    if has_package:
        keep[-1] = False
    pi = (hw * prob).sum(1) / wsum
    rows = [np.asarray(tokens[0], np.float64) * xs] + [x[j] for j in range(n) if keep[j]]
    if (~keep).any():
        pj = pi[~keep]
        acc = (pj[:, None] * x[~keep]).sum(0)
        rows.append(acc / pj.sum() if cfg.normalize_package else acc)
    return {"tokens_out": np.array(rows), "keep": keep, "n_next": len(rows), "margin": margin,
            "pi": pi}
