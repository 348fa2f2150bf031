"""Calibration and integer-only inference of the ViT, with the units' golden models in the loop.

:func:`calibrate` runs the float model (:func:`vitaccel.golden.vit.forward_float`) on a batch of
real images, records the range of every tensor a unit or requantiser takes, and turns the
weights into an :class:`IntViT`: int8 weights (per-tensor symmetric, LayerNorm affines folded
into the following linear layer), int32 biases, every requantiser (``golden/fixedpoint.py``) and
one unit ``Config`` per layer (``vitcod``, ``vitality``, ``fact``, ``heatvit``) whose scales,
shifts and thresholds come from those ranges. Nothing is hand-set: every constant below is
either a format of the integer pipeline or derived from the calibration batch.

The integer forward (:meth:`IntViT.forward`) uses only integer arithmetic:

* residual stream int16 at one scale ``residual_scale`` (the largest residual value seen, with
  25 % headroom), additions saturate;
* LayerNorm: the residual requantised to int8 at the LayerNorm's own input scale, then the
  ``heatvit`` unit's integer LayerNorm (:func:`vitaccel.golden.heatvit.layernorm_q`, one group of
  D channels) to int8 with ``LN_FRAC`` fraction bits; gamma/beta live in the next linear layer;
* linear layers: the ``gemm`` engine's arithmetic (:func:`vitaccel.golden.gemm.gemm`, int8 x int8
  -> int32) plus an int32 bias, then a requantiser (multiplier + shift, RHU, saturating);
* GELU: the I-BERT integer GELU of the ``heatvit`` unit (:func:`vitaccel.golden.heatvit.gelu_q`);
* attention, by variant: integer softmax attention of the ``vitcod`` unit
  (:func:`vitaccel.golden.vitcod.attention_int_batched`, the engines' arithmetic) with every key
  kept (``int8``, ``heatvit``), with the trained fixed masks (``vitcod``), or with the keys that
  the ``fact`` predictor selects (:func:`vitaccel.golden.fact.predict` on the LayerNorm output
  and the Q/K weights); the ``vitality`` unit's Taylor attention
  (:func:`vitaccel.golden.vitality.taylor_int`);
* token selection: the ``heatvit`` unit's integer selector
  (:func:`vitaccel.golden.heatvit.selector_int`) on the residual stream requantised to int8;
  the following blocks run on ``[CLS, kept tokens, package]``.

Every unit call can be captured (``capture=``) with its exact inputs and outputs, which is what
the RTL tests replay (``tests/test_model_rtl.py``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import numpy as np

from vitaccel.golden import fact as F
from vitaccel.golden import heatvit as H
from vitaccel.golden import vit as V
from vitaccel.golden import vitality as VT
from vitaccel.golden import vitcod as VC
from vitaccel.golden.fixedpoint import Requant, quantize_multiplier, requantize, saturate
from vitaccel.golden.gemm import gemm

__all__ = ["LN_FRAC", "RESIDUAL_BITS", "MIN_CALIBRATION_IMAGES", "ATTENTION", "IntViT",
           "calibrate", "variant_attention", "load_calibration_images", "variant_params", "build",
           "layer_errors"]

#: Fraction bits of the block LayerNorm outputs (int8): |y| < 4 unsaturated, 1/32 resolution.
LN_FRAC = 5
#: Width of the integer residual stream.
RESIDUAL_BITS = 16
#: A calibration batch smaller than this is refused (the ranges would not be representative).
MIN_CALIBRATION_IMAGES = 32
#: Headroom on the residual stream's calibrated range (values beyond it saturate).
RESIDUAL_HEADROOM = 1.25
#: Attention of each variant: what the units compute between the Q/K/V and output projections.
ATTENTION = {"int8": "softmax", "heatvit": "softmax", "vitcod": "vitcod", "vitality": "vitality",
             "fact": "fact"}
#: Probability mass of the top key above which FACT treats a row as one-hot (only the argmax is
#: needed): the one-hot threshold in logits is ln((N - 1) p / (1 - p)).
FACT_ONEHOT_MASS = 0.99


def variant_attention(variant: str) -> str:
    """Attention kind of an evaluation variant (``a+b`` combinations: the non-heatvit part)."""
    parts = variant.split("+")
    kinds = {ATTENTION[p] for p in parts if p in ATTENTION and p != "heatvit"} - {"softmax"}
    if len(kinds) > 1:
        raise ValueError(f"variant {variant!r} combines two attention units ({sorted(kinds)})")
    return kinds.pop() if kinds else "softmax"


def _scale8(peak: float) -> float:
    return max(float(peak), 1e-8) / 127.0


@dataclass
class Linear:
    """int8 weight (in, out), int32 bias at ``in_scale * w_scale``."""
    w: np.ndarray
    b: np.ndarray
    in_scale: float
    w_scale: float

    @property
    def acc_scale(self) -> float:
        return self.in_scale * self.w_scale

    def __call__(self, x):
        shape = x.shape
        acc = gemm(x.reshape(-1, shape[-1]), self.w).astype(np.int64) + self.b
        return acc.reshape(shape[:-1] + (self.w.shape[1],))

    @classmethod
    def fold(cls, w, b, in_scale, gamma=None, beta=None):
        """Quantise ``y @ w + b`` for an input at ``in_scale``; with ``gamma``/``beta`` the input
        is a LayerNorm output before its affine, folded here: ``diag(gamma) w``, ``b + beta w``."""
        w = np.asarray(w, np.float64)
        b = np.asarray(b, np.float64)
        if gamma is not None:
            b = b + np.asarray(beta, np.float64) @ w
            w = np.asarray(gamma, np.float64)[:, None] * w
        wq, ws = H.quantize_tensor(w)      # the selector weights' per-tensor int8 rule
        return cls(wq.astype(np.int64), H.quantize_bias(b, in_scale * ws), in_scale, ws)


@dataclass
class Block:
    ln1_in: Requant            # residual -> int8 LayerNorm input
    ln1_eps: int
    qkv: Linear
    rq_q: Requant
    rq_k: Requant
    rq_v: Requant
    proj: Linear
    rq_proj: Requant           # proj accumulator -> residual
    ln2_in: Requant
    ln2_eps: int
    fc1: Linear
    gelu_in: Requant
    gelu_out: Requant
    fc2: Linear
    rq_fc2: Requant
    scales: dict               # the float scales chosen (reported by calibration)
    unit: dict = field(default_factory=dict)   # attention unit Config(s) of this block


def _ln_eps(eps: float, d: int, x_scale: float) -> int:
    return max(1, int(round(d * d * eps / x_scale ** 2)))


def _rq(real: float) -> Requant:
    return quantize_multiplier(real)


def load_calibration_images(count: int = 512, data_dir=None) -> np.ndarray:
    """Calibration images: the first ``count`` *training* images (never the test images that
    are scored): from the full set when found, else from the shipped calibration subset."""
    from vitaccel.golden import fmnist
    if count < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"calibration batch of {count} images is too small (at least "
                         f"{MIN_CALIBRATION_IMAGES})")
    folder = fmnist.find_data_dir(data_dir)
    if folder is not None:
        images, _ = fmnist.load_split(folder, "train")
    else:
        images = fmnist.load_calibration()
    if count > len(images):
        raise ValueError(f"calibration batch of {count} images asked for, only {len(images)} "
                         f"available")
    return images[:count]


class IntViT:
    """The integer ViT of one variant (see the module docstring). Build with :func:`calibrate`."""

    def __init__(self, cfg: V.ViTConfig, variant: str, params: dict, stats: dict,
                 fact_mantissa_bits: int = 2):
        self.cfg = cfg
        self.variant = variant
        self.attention = variant_attention(variant)
        self.selectors = "heatvit" in variant.split("+")
        self.masks = np.asarray(params["mask"], bool) if self.attention == "vitcod" else None
        D, d = cfg.dim, cfg.head_dim
        res = stats["residual"] * RESIDUAL_HEADROOM / (2 ** (RESIDUAL_BITS - 1) - 1)
        self.residual_scale = res
        ln_scale = 2.0 ** -LN_FRAC
        self.in_scale = 1.0 / 128
        # patch embedding: int8 pixels (p - 128 at 1/128) -> residual; bias and positions added
        self.patch = Linear.fold(params["patch.w"], np.zeros(D), self.in_scale)
        self.rq_patch = _rq(self.patch.acc_scale / res)
        pos = np.asarray(params["pos"], np.float64)
        self.pos = np.asarray(saturate(np.floor((pos + np.concatenate(
            [np.asarray(params["cls"])[None], np.broadcast_to(params["patch.b"], (cfg.patches, D))])
        ) / res + 0.5).astype(np.int64), RESIDUAL_BITS), np.int64)
        self.blocks = []
        for i in range(cfg.depth):
            p = f"blocks.{i}."
            s = {k: stats[k][i] for k in ("ln1_in", "q", "k", "v", "attn_out", "ln2_in", "gelu_out")}
            sc = {"ln1_in": _scale8(s["ln1_in"]), "q": _scale8(s["q"]), "k": _scale8(s["k"]),
                  "v": _scale8(s["v"]), "attn_out": _scale8(s["attn_out"]),
                  "ln2_in": _scale8(s["ln2_in"]), "gelu_out": _scale8(s["gelu_out"])}
            qkv = Linear.fold(params[p + "qkv.w"], params[p + "qkv.b"], ln_scale,
                              params[p + "ln1.g"], params[p + "ln1.b"])
            proj = Linear.fold(params[p + "proj.w"], params[p + "proj.b"], sc["attn_out"])
            fc1 = Linear.fold(params[p + "fc1.w"], params[p + "fc1.b"], ln_scale,
                              params[p + "ln2.g"], params[p + "ln2.b"])
            fc2 = Linear.fold(params[p + "fc2.w"], params[p + "fc2.b"], sc["gelu_out"])
            blk = Block(
                ln1_in=_rq(res / sc["ln1_in"]), ln1_eps=_ln_eps(cfg.ln_eps, D, sc["ln1_in"]),
                qkv=qkv, rq_q=_rq(qkv.acc_scale / sc["q"]), rq_k=_rq(qkv.acc_scale / sc["k"]),
                rq_v=_rq(qkv.acc_scale / sc["v"]),
                proj=proj, rq_proj=_rq(proj.acc_scale / res),
                ln2_in=_rq(res / sc["ln2_in"]), ln2_eps=_ln_eps(cfg.ln_eps, D, sc["ln2_in"]),
                fc1=fc1, gelu_in=_rq(fc1.acc_scale * 2 ** H.GELU_X),
                gelu_out=_rq(2.0 ** -(H.GELU_X + 14 + 1) / sc["gelu_out"]),
                fc2=fc2, rq_fc2=_rq(fc2.acc_scale / res), scales=sc)
            blk.unit = self._attention_unit(i, blk, stats, fact_mantissa_bits)
            self.blocks.append(blk)
        self.lnf_scale = _scale8(stats["lnf_in"])
        self.lnf_in = _rq(res / self.lnf_scale)
        self.lnf_eps = _ln_eps(cfg.ln_eps, D, self.lnf_scale)
        self.head = Linear.fold(params["head.w"], params["head.b"], ln_scale, params["ln.g"],
                                params["ln.b"])
        self.stages = []
        if self.selectors:
            self.stages = [self._selector_unit(j, params, stats) for j in
                           range(len(cfg.selector_blocks))]

    # --- unit configs ---------------------------------------------------------------------------
    def _attention_unit(self, i, blk, stats, mantissa_bits) -> dict:
        from vitaccel.units import fact as UF
        from vitaccel.units import vitality as UT
        from vitaccel.units import vitcod as UC
        cfg, sc = self.cfg, blk.scales
        N, d = cfg.tokens + (1 if self.selectors else 0), cfg.head_dim
        kind = self.attention
        if kind == "vitality":
            g_peak = stats["taylor_g"][i] / (sc["k"] * sc["v"]) * 2 ** VT.KBAR_FRAC
            g_shift = max(0, int(math.ceil(math.log2(g_peak * 1.5 + 1))) - (VT.GQ_BITS - 1))
            ucfg = dataclasses.replace(UT.board_config("ulx3s"), d=d, n_max=N, q_scale=sc["q"],
                                       k_scale=sc["k"], v_scale=sc["v"],
                                       out_scale=sc["attn_out"], g_shift=g_shift)
            return {"vitality": ucfg}
        vc = dataclasses.replace(UC.board_config("ulx3s"), n_max=N, d_max=d, g_max=N,
                                 nnz_max=N * N, dense_groups_max=N,
                                 theta_d=max(1, round(N * 50 / 197)),
                                 q_scale=sc["q"], k_scale=sc["k"], v_scale=sc["v"],
                                 out_scale=sc["attn_out"])
        out = {"vitcod": vc}
        if kind == "fact":
            k = cfg.topk
            onehot = math.log((N - 1) * FACT_ONEHOT_MASS / (1 - FACT_ONEHOT_MASS))
            out["fact"] = dataclasses.replace(
                UF.board_config("ulx3s"), heads=cfg.heads, k=k, k_max=max(k, 2),
                mantissa_bits=mantissa_bits, onehot_threshold=onehot,
                importance_threshold=cfg.heads * k, x_scale=2.0 ** -LN_FRAC,
                wq_scale=blk.qkv.w_scale, wk_scale=blk.qkv.w_scale, n_max=N,
                d_model_max=cfg.dim)
        return out

    def _selector_unit(self, j, params, stats):
        from vitaccel.units import heatvit as UH
        cfg = self.cfg
        st = stats["selectors"][j]
        ucfg = dataclasses.replace(
            UH.board_config("ulx3s"), D=cfg.dim, heads=cfg.heads, n_max=cfg.patches,
            shared_weights=False, decision="logit", normalize_package=True,
            x_scale=_scale8(st["tokens"]), u_scale=_scale8(st["u"]), a2_scale=_scale8(st["a2"]),
            a3_scale=_scale8(st["a3"]), hb_scale=_scale8(st["hb"]), ln_eps=V.SELECTOR_LN_EPS)
        sp = V.selector_params(params, j)
        h = cfg.heads
        sd = {"senet.0.weight": sp["v1"], "senet.0.bias": sp["c1"],
              "senet.2.weight": sp["v2"], "senet.2.bias": sp["c2"]}
        for i in range(h):
            sd.update({f"in_conv.{i}.0.weight": sp["ln.g"][i], f"in_conv.{i}.0.bias": sp["ln.b"][i],
                       f"in_conv.{i}.1.weight": sp["w1"][i], f"in_conv.{i}.1.bias": sp["b1"][i],
                       f"out_conv.{i}.0.weight": sp["w2"][i], f"out_conv.{i}.0.bias": sp["b2"][i],
                       f"out_conv.{i}.2.weight": sp["w3"][i], f"out_conv.{i}.2.bias": sp["b3"][i],
                       f"out_conv.{i}.4.weight": sp["w4"][i], f"out_conv.{i}.4.bias": sp["b4"][i]})
        weights = H.from_state_dict(ucfg, sd)
        return {"config": ucfg, "weights": weights, "params": H.derive(ucfg, weights),
                "rq_in": _rq(self.residual_scale / ucfg.x_scale),
                "rq_pkg": _rq(ucfg.x_scale / self.residual_scale)}

    # --- report ---------------------------------------------------------------------------------
    def calibration_report(self) -> dict:
        """Every chosen scale and unit Config, JSON-serialisable."""
        def cfgdict(c):
            return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
        blocks = []
        for blk in self.blocks:
            blocks.append({"scales": blk.scales,
                           "units": {name: cfgdict(c) for name, c in blk.unit.items()}})
        return {"variant": self.variant, "residual_scale": self.residual_scale,
                "layernorm_frac_bits": LN_FRAC, "blocks": blocks,
                "selectors": [{"block": b, "heatvit": cfgdict(s["config"])}
                              for b, s in zip(self.cfg.selector_blocks, self.stages)],
                "final_ln_in_scale": self.lnf_scale}

    # --- forward --------------------------------------------------------------------------------
    def embed(self, images) -> np.ndarray:
        imgs = np.asarray(images)
        x8 = (V.patchify(imgs.astype(np.int64), self.cfg.patch) - 128)
        acc = self.patch(x8)
        x = requantize(acc, self.rq_patch, RESIDUAL_BITS)
        n = len(imgs)
        x = np.concatenate([np.zeros((n, 1, self.cfg.dim), np.int64), x], axis=1)
        return np.asarray(saturate(x + self.pos, RESIDUAL_BITS), np.int64)

    def _layernorm(self, x16, rq_in, eps):
        x8 = requantize(x16, rq_in, 8)
        y, _, _ = H.layernorm_q(x8, self.cfg.dim, eps, LN_FRAC)
        return np.asarray(y, np.int64)

    def _attention(self, i, blk, y, q, k, v, capture, idx=None):
        """q, k, v (n, h, N, d) int8; y the LayerNorm output (FACT's input). -> (n, h, N, d)."""
        kind = self.attention
        n, h, N, d = q.shape
        if kind == "vitality":
            ucfg = blk.unit["vitality"]
            p = ucfg.params
            out = np.empty_like(q)
            clamped = 0
            for b in range(n):
                r = VT.taylor_int(q[b], k[b], v[b], p)
                out[b] = r["z"]
                clamped += int(r["denominator_clamped"].sum())
                if capture is not None and b in capture["images"]:
                    capture["calls"].append({"unit": "vitality", "block": i, "image": b,
                                             "config": ucfg, "inputs": {"q": q[b], "k": k[b], "v": v[b]},
                                             "outputs": {"z": r["z"],
                                                         "denominator_clamped": r["denominator_clamped"]}})
            self._stats["vitality_clamped_rows"] = self._stats.get("vitality_clamped_rows", 0) + clamped
            return out
        vc = blk.unit["vitcod"]
        rq_s, rq_o = VC.score_requant(vc.q_scale, vc.k_scale, d), VC.out_requant(vc.v_scale, vc.out_scale)
        if kind == "vitcod":
            # idx: the original position of every row (the package token: one past the last),
            # so the fixed mask follows the tokens through HeatViT's compaction
            mask = self.masks[i]
            full = mask.shape[-1]
            if idx is None:
                keep = np.broadcast_to(~mask[:, :N, :N], (n, h, N, N))
            else:
                padded = np.pad(~mask, ((0, 0), (0, 1), (0, 1)), constant_values=True)
                ix = np.minimum(idx, full)
                keep = np.broadcast_to(padded[:, ix][:, :, ix], (n, h, N, N))
        elif kind == "fact":
            fc = blk.unit["fact"]
            wq = blk.qkv.w[:, :self.cfg.dim]
            wk = blk.qkv.w[:, self.cfg.dim:2 * self.cfg.dim]
            bq = blk.qkv.b[:self.cfg.dim]
            bk = blk.qkv.b[self.cfg.dim:2 * self.cfg.dim]
            from vitaccel.units import fact as UF
            t_int = UF.t_int(fc, self.cfg.dim)
            keep = np.empty((n, h, N, N), bool)
            for b in range(n):
                pr = F.predict(y[b], wq, wk, bq, bk, heads=h, k=min(fc.k, N), t_int=t_int,
                               importance_threshold=fc.importance_threshold,
                               mantissa_bits=fc.mantissa_bits, qk_bits=fc.qk_bits)
                sel = pr["select"].copy()
                one = pr["onehot"]
                if one.any():
                    hh, rr = np.nonzero(one)
                    sel[hh, rr] = False
                    sel[hh, rr, pr["argmax"][hh, rr]] = True
                keep[b] = sel
                if capture is not None and b in capture["images"]:
                    capture["calls"].append({"unit": "fact", "block": i, "image": b, "config": fc,
                                             "inputs": {"x": y[b], "wq": wq, "wk": wk, "bq": bq,
                                                        "bk": bk},
                                             "outputs": {key: pr[key] for key in
                                                         ("select", "onehot", "argmax", "keep_kv",
                                                          "importance", "high_precision")}})
            self._stats["fact_kept"] = self._stats.get("fact_kept", 0) + int(keep.sum())
            self._stats["fact_scores"] = self._stats.get("fact_scores", 0) + keep.size
        else:
            keep = np.ones((n, h, N, N), bool)
        out = VC.attention_int_batched(q, k, v, keep, rq_s, rq_o)
        if capture is not None:
            for b in capture["images"]:
                if b < n:
                    capture["calls"].append({"unit": "vitcod", "block": i, "image": b, "config": vc,
                                             "inputs": {"q": q[b], "k": k[b], "v": v[b],
                                                        "mask": ~keep[b]},
                                             "outputs": {"out": out[b]}})
        return out

    def block(self, i, x, capture=None, checkpoints=None, idx=None):
        cfg, blk = self.cfg, self.blocks[i]
        n, N, D = x.shape
        h, d = cfg.heads, cfg.head_dim
        y = self._layernorm(x, blk.ln1_in, blk.ln1_eps)
        acc = blk.qkv(y)

        def heads(a):
            return np.asarray(a, np.int64).reshape(n, N, h, d).transpose(0, 2, 1, 3)
        q = heads(requantize(acc[..., :D], blk.rq_q, 8))
        k = heads(requantize(acc[..., D:2 * D], blk.rq_k, 8))
        v = heads(requantize(acc[..., 2 * D:], blk.rq_v, 8))
        o = self._attention(i, blk, y, q, k, v, capture, idx)
        o = o.transpose(0, 2, 1, 3).reshape(n, N, D)
        x = np.asarray(saturate(x + requantize(blk.proj(o), blk.rq_proj, RESIDUAL_BITS),
                                RESIDUAL_BITS), np.int64)
        if checkpoints is not None:
            checkpoints.setdefault(f"attn{i}", []).append(x)
        y = self._layernorm(x, blk.ln2_in, blk.ln2_eps)
        hid = H.gelu_q(blk.fc1(y), blk.gelu_in, blk.gelu_out, *H.gelu_constants(1.0))
        x = np.asarray(saturate(x + requantize(blk.fc2(np.asarray(hid, np.int64)), blk.rq_fc2,
                                               RESIDUAL_BITS), RESIDUAL_BITS), np.int64)
        return x

    def select(self, j, x, has_package, capture=None, image=None):
        """HeatViT stage ``j`` on one image's residual rows ``x`` (N, D) -> new rows, keep."""
        st = self.stages[j]
        if has_package and len(x) == 2:
            # An earlier stage dropped every token: CLS and the package remain and there is
            # nothing to decide (the unit needs a candidate besides the package; the float
            # selector would pack the package into itself), so the stage passes them on.
            return x, True, [0, -1]
        tok8 = np.asarray(requantize(x, st["rq_in"], 8), np.int64)
        r = H.selector_int(st["params"], st["weights"], tok8, has_package=has_package)
        keep = r["keep"]
        kept = np.nonzero(keep)[0]
        rows = [x[0]] + [x[1 + t] for t in kept]
        order = [0] + [1 + int(t) for t in kept]
        if (~keep).any():
            pkg = requantize(r["tokens_out"][-1], st["rq_pkg"], RESIDUAL_BITS)
            rows.append(np.asarray(pkg, np.int64))
            order.append(-1)
        if capture is not None and image in capture["images"]:
            capture["calls"].append({"unit": "heatvit", "block": self.cfg.selector_blocks[j],
                                     "image": image, "config": st["config"],
                                     "inputs": {"tokens": tok8, "weights": st["weights"],
                                                "has_package": has_package},
                                     "outputs": {k: r[k] for k in ("tokens_out", "keep", "n_next")}})
        return np.stack(rows), bool((~keep).any()), order

    def forward(self, images, capture=None, checkpoints=None) -> tuple[np.ndarray, dict]:
        """Integer logits (n, classes) of uint8 images, and stats (tokens per block, ...).

        ``capture``: ``{"images": {0, ...}, "calls": []}`` collects each unit call of those
        images (inputs, outputs and Config). ``checkpoints``: dict receiving the dequantised
        residual stream after every block (``block{i}``; a list of per-image arrays with
        selectors)."""
        images = _check_images(images, self.cfg)
        self._stats = {}
        x = self.embed(images)
        n = len(images)
        tokens = np.zeros((n, self.cfg.depth), np.int64)
        if not self.selectors:
            for i in range(self.cfg.depth):
                x = self.block(i, x, capture)
                tokens[:, i] = x.shape[1]
                if checkpoints is not None:
                    checkpoints[f"block{i}"] = x * self.residual_scale
            logits = self._head(x[:, 0])
            return logits, {"tokens": tokens, **self._stats}
        logits = np.empty((n, self.cfg.classes), np.int64)
        positions: dict = {}       # image -> original token positions after each selector stage
        for b in range(n):
            xb = x[b:b + 1]
            has_pkg = False
            stage = 0
            idx = np.arange(self.cfg.tokens)     # original positions; the package: tokens
            for i in range(self.cfg.depth):
                if i in self.cfg.selector_blocks:
                    rows, has_pkg, order = self.select(stage, xb[0], has_pkg, capture, b)
                    idx = np.array([idx[o] if o >= 0 else self.cfg.tokens for o in order])
                    positions.setdefault(b, []).append(idx.copy())
                    xb = rows[None]
                    stage += 1
                sub = None
                if capture is not None and b in capture["images"]:
                    sub = {"images": {0}, "calls": []}
                xb = self.block(i, xb, sub, idx=idx)
                if sub is not None:
                    for c in sub["calls"]:
                        c["image"] = b
                    capture["calls"].extend(sub["calls"])
                tokens[b, i] = xb.shape[1]
                if checkpoints is not None:
                    checkpoints.setdefault(f"block{i}", []).append(xb[0] * self.residual_scale)
            logits[b] = self._head(xb[:, 0])[0]
        return logits, {"tokens": tokens, "positions": [positions[b] for b in range(n)],
                        **self._stats}

    def _head(self, cls16):
        y = self._layernorm(cls16, self.lnf_in, self.lnf_eps)
        return self.head(y)


def _check_images(images, cfg):
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels, got dtype {a.dtype}")
    if a.ndim != 3 or a.shape[1:] != (cfg.image, cfg.image):
        raise ValueError(f"images must have shape (n, {cfg.image}, {cfg.image}), got {a.shape}")
    return a


def calibrate(cfg: V.ViTConfig, params: dict, variant: str, images,
              fact_mantissa_bits: int = 2) -> IntViT:
    """Scales from the float model's activations on ``images`` (uint8, at least
    :data:`MIN_CALIBRATION_IMAGES`), then the :class:`IntViT` of ``variant`` (``int8``,
    ``heatvit``, ``vitcod``, ``vitality``, ``fact`` or a ``+`` combination)."""
    images = _check_images(images, cfg)
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"calibration batch of {len(images)} images is too small (at least "
                         f"{MIN_CALIBRATION_IMAGES})")
    parts = variant.split("+")
    unknown = [p for p in parts if p not in ATTENTION]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r} in {variant!r}; known: "
                         f"{', '.join(ATTENTION)}")
    kind = variant_attention(variant)
    mode = {"softmax": "softmax", "vitcod": "mask", "vitality": "taylor", "fact": "topk"}[kind]
    selectors = "heatvit" in parts
    record: dict = {}
    for start in range(0, len(images), 256):
        rec: dict = {}
        V.forward_float(cfg, params, images[start:start + 256], mode, selectors, record=rec)
        for key, val in rec.items():
            if key == "selectors":
                record.setdefault(key, [dict() for _ in val])
                for agg, new in zip(record[key], val):
                    for k2, v2 in new.items():
                        agg[k2] = max(agg.get(k2, 0.0), v2)
            else:
                record[key] = np.maximum(record[key], val) if key in record else np.asarray(val)
    stats = {k: (list(v) if k == "selectors" else np.asarray(v, np.float64)) for k, v in record.items()}
    stats["residual"] = float(np.max(stats["residual"]))
    stats["lnf_in"] = float(np.max(stats["lnf_in"]))
    return IntViT(cfg, variant, params, stats, fact_mantissa_bits)


def variant_params(variant: str, weights_dir=None) -> tuple[V.ViTConfig, dict]:
    """The shipped float weights of an evaluation variant: ``int8`` uses ``float.npz``, a unit or
    a combination trained together (``heatvit+vitcod``) its own fine-tuned file; a combination
    without one takes the heatvit weights with the other unit's masks."""
    from pathlib import Path
    folder = Path(weights_dir) if weights_dir is not None else V.WEIGHTS_DIR
    parts = variant.split("+")
    for p in parts:
        if p not in ATTENTION and p != "float":
            raise ValueError(f"unknown variant {p!r} in {variant!r}; known: float, "
                             f"{', '.join(ATTENTION)}")
    if variant in V.VARIANTS and (folder / f"{variant}.npz").is_file():   # trained as one
        cfg, params, _ = V.load_params(variant, folder / f"{variant}.npz")
        return cfg, dict(params)
    base = "float" if parts == ["int8"] or parts == ["float"] else \
        ("heatvit" if "heatvit" in parts else parts[0])
    cfg, params, _ = V.load_params(base, folder / f"{base}.npz")
    params = dict(params)
    for p in parts:
        if p != base and p in ("vitcod",):
            _, extra, _ = V.load_params(p, folder / f"{p}.npz")
            params["mask"] = extra["mask"]
    return cfg, params


def build(variant: str, calibration_images=None, weights_dir=None, **kw) -> IntViT:
    """Shipped weights of ``variant`` calibrated on ``calibration_images`` (default: the first
    512 training images): the one call from weights to an integer model."""
    cfg, params = variant_params(variant, weights_dir)
    if calibration_images is None:
        calibration_images = load_calibration_images()
    return calibrate(cfg, params, variant, calibration_images, **kw)


def layer_errors(model: IntViT, params: dict, images) -> list[dict]:
    """Per-layer checkpoints: after every block, the relative L2 error of the integer residual
    stream (dequantised) against the float model of the same variant on ``images``: over the
    CLS token (always present) and over every token (when no selector changed the token set).
    Where the integer model parts from the float one shows here first."""
    cfg = model.cfg
    kind = model.attention
    mode = {"softmax": "softmax", "vitcod": "mask", "vitality": "taylor", "fact": "topk"}[kind]
    cf, ci = {}, {}
    V.forward_float(cfg, params, images, mode, model.selectors, checkpoints=cf)
    model.forward(images, checkpoints=ci)
    out = []
    for i in range(cfg.depth):
        f, q = cf[f"block{i}"], ci[f"block{i}"]
        if isinstance(q, list):
            q_cls = np.stack([x[0] for x in q])
        else:
            q_cls = q[:, 0]
        row = {"block": i, "cls_rel_error": float(np.linalg.norm(q_cls - f[:, 0]) /
                                                  np.linalg.norm(f[:, 0]))}
        if not isinstance(q, list):
            row["rel_error"] = float(np.linalg.norm(q - f) / np.linalg.norm(f))
        out.append(row)
    return out
