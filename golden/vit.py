"""A DeiT-style vision transformer in NumPy: its shape, its weights and the float forward.

The model the units run on (trained here on Fashion-MNIST by :mod:`vitaccel.train`, JAX + optax):
patch embedding (a linear map of each ``patch x patch`` patch, i.e. the stride-``patch``
convolution), a CLS token, a learned position embedding, ``depth`` pre-LN blocks of multi-head
attention and a GELU MLP (exact erf GELU), a final LayerNorm and a linear head on the CLS token.

Pixels enter as ``(pixel - 128) / 128`` so the integer model's input is the int8 ``pixel - 128``
at scale 1/128, exactly.

Weights are a flat dict of float arrays under :func:`param_shapes`' names, saved as ``.npz``
(``golden/data/vit_fmnist/*.npz``). Linear weights are (in, out): ``y = x @ w + b``.
Variants (one weight file each) add:

* ``heatvit``: token selectors before the blocks in ``ViTConfig.selector_blocks``, in the float
  form of the ``heatvit`` unit (per-head LayerNorm + 4-layer MLP with a global half, head
  importance; names ``sel{s}.*``, PyTorch (out, in) order as :mod:`.heatvit` loads them);
* ``vitcod``: fixed attention masks ``mask`` (depth, heads, N, N; True = pruned);
* ``vitality``: first-order Taylor attention with mean-centred keys (no new tensors);
* ``fact``: attention restricted to each row's top-k (no new tensors; ``ViTConfig.topk``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, asdict
from pathlib import Path

import numpy as np

__all__ = ["ViTConfig", "VARIANTS", "WEIGHTS_DIR", "param_shapes", "check_params",
           "load_params", "save_params", "images_to_input", "patchify", "gelu", "layernorm",
           "softmax", "forward_float", "attention_float_variant", "macs_per_image",
           "selector_stage", "selector_params", "SELECTOR_LN_EPS", "MODES"]

#: The shipped weights; ``VITACCEL_WEIGHTS=DIR`` points every loader at another folder holding
#: ``<variant>.npz`` files (e.g. a retrained set from ``python -m vitaccel.train --out``).
WEIGHTS_DIR = Path(os.environ.get("VITACCEL_WEIGHTS") or
                   Path(__file__).resolve().parent / "data" / "vit_fmnist")
#: The weight sets, one per trained variant (``heatvit+vitcod``: selectors and fixed masks
#: fine-tuned together).
VARIANTS = ("float", "heatvit", "vitcod", "vitality", "fact", "heatvit+vitcod")
ATTENTION_MODES = ("softmax", "taylor", "mask", "topk")
#: variant -> (attention mode, HeatViT selectors on)
MODES = {"float": ("softmax", False), "heatvit": ("softmax", True), "vitcod": ("mask", False),
         "vitality": ("taylor", False), "fact": ("topk", False),
         "heatvit+vitcod": ("mask", True)}


@dataclass(frozen=True)
class ViTConfig:
    """Shape of the ViT. Defaults: 28 x 28 grey images, patch 4 (49 patches + CLS = 50 tokens),
    D = 64, 6 blocks of 2 heads x 32, MLP 128, 10 classes."""
    image: int = 28
    patch: int = 4
    dim: int = 64
    depth: int = 6
    heads: int = 2
    mlp: int = 128
    classes: int = 10
    ln_eps: float = 1e-6
    #: blocks preceded by a HeatViT token selector (heatvit variant)
    selector_blocks: tuple = (1, 3, 4)
    #: keep-ratio targets of those selectors, relative to the tokens entering each
    keep_ratios: tuple = (0.7, 0.7, 0.7)
    #: keys kept per query row by the fact variant
    topk: int = 10

    def __post_init__(self):
        for name in ("image", "patch", "dim", "depth", "heads", "mlp", "classes", "topk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {v!r}")
        if self.image % self.patch:
            raise ValueError(f"ViTConfig.image ({self.image}) must be a multiple of patch "
                             f"({self.patch})")
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig.dim ({self.dim}) must be a multiple of heads ({self.heads})")
        if len(self.selector_blocks) != len(self.keep_ratios):
            raise ValueError("ViTConfig.selector_blocks and keep_ratios must have equal lengths")
        if any(not 1 <= b < self.depth for b in self.selector_blocks) or \
                list(self.selector_blocks) != sorted(set(self.selector_blocks)):
            raise ValueError(f"ViTConfig.selector_blocks must be increasing block indices in "
                             f"[1, {self.depth - 1}], got {self.selector_blocks}")
        if any(not 0 < r <= 1 for r in self.keep_ratios):
            raise ValueError(f"ViTConfig.keep_ratios must be in (0, 1], got {self.keep_ratios}")
        if self.topk > self.tokens:
            raise ValueError(f"ViTConfig.topk ({self.topk}) exceeds the {self.tokens} tokens")

    @property
    def grid(self) -> int:
        return self.image // self.patch

    @property
    def patches(self) -> int:
        return self.grid ** 2

    @property
    def tokens(self) -> int:
        return self.patches + 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ViTConfig: unknown fields {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def param_shapes(cfg: ViTConfig, variant: str = "float") -> dict:
    """Name -> shape of every weight tensor of ``variant``."""
    D, P = cfg.dim, cfg.patch * cfg.patch
    s = {"patch.w": (P, D), "patch.b": (D,), "cls": (D,), "pos": (cfg.tokens, D),
         "ln.g": (D,), "ln.b": (D,), "head.w": (D, cfg.classes), "head.b": (cfg.classes,)}
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        s.update({p + "ln1.g": (D,), p + "ln1.b": (D,), p + "qkv.w": (D, 3 * D),
                  p + "qkv.b": (3 * D,), p + "proj.w": (D, D), p + "proj.b": (D,),
                  p + "ln2.g": (D,), p + "ln2.b": (D,), p + "fc1.w": (D, cfg.mlp),
                  p + "fc1.b": (cfg.mlp,), p + "fc2.w": (cfg.mlp, D), p + "fc2.b": (D,)})
    parts = variant.split("+")
    if "heatvit" in parts:
        h, d = cfg.heads, cfg.head_dim
        for j in range(len(cfg.selector_blocks)):
            p = f"sel{j}."
            s.update({p + "ln.g": (h, d), p + "ln.b": (h, d), p + "w1": (h, d, d), p + "b1": (h, d),
                      p + "w2": (h, d // 2, d), p + "b2": (h, d // 2),
                      p + "w3": (h, d // 4, d // 2), p + "b3": (h, d // 4),
                      p + "w4": (h, 2, d // 4), p + "b4": (h, 2),
                      p + "v1": (h // 2, h), p + "c1": (h // 2,), p + "v2": (h, h // 2),
                      p + "c2": (h,)})
    if "vitcod" in parts:
        s["mask"] = (cfg.depth, cfg.heads, cfg.tokens, cfg.tokens)
    return s


def check_params(cfg: ViTConfig, params: dict, variant: str = "float", source: str = "weights"):
    """``ValueError`` naming the first missing or mis-shaped tensor."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    for name, shape in param_shapes(cfg, variant).items():
        if name not in params:
            raise ValueError(f"{source}: no tensor {name!r} for the {variant} variant of {cfg}")
        if tuple(np.shape(params[name])) != tuple(shape):
            raise ValueError(f"{source}: {name} has shape {tuple(np.shape(params[name]))}, the "
                             f"config needs {tuple(shape)}")
        if name != "mask" and not np.all(np.isfinite(params[name])):
            raise ValueError(f"{source}: {name} holds non-finite values")
    return params


def save_params(path, cfg: ViTConfig, params: dict, variant: str, meta: dict | None = None):
    """Write ``params`` (float32; ``mask`` as bool) plus the config and ``meta`` as JSON."""
    import json
    check_params(cfg, params, variant)
    arrays = {k: (np.asarray(v, bool) if k == "mask" else np.asarray(v, np.float32))
              for k, v in params.items() if k in param_shapes(cfg, variant)}
    info = {"variant": variant, "config": cfg.to_dict(), **(meta or {})}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, __meta__=np.array(json.dumps(info)), **arrays)
    tmp.replace(path)


def load_params(variant: str = "float", path=None) -> tuple[ViTConfig, dict, dict]:
    """``(cfg, params, meta)`` of a weight file (the shipped one of ``variant`` by default)."""
    import json
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    path = Path(path) if path is not None else WEIGHTS_DIR / f"{variant}.npz"
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist (train it: make train)")
    with np.load(path) as z:
        if "__meta__" not in z.files:
            raise ValueError(f"{path}: not a vitaccel ViT weight file (no __meta__)")
        meta = json.loads(str(z["__meta__"]))
        params = {k: z[k] for k in z.files if k != "__meta__"}
    cfg = ViTConfig.from_dict(meta["config"])
    check_params(cfg, params, meta.get("variant", variant), source=str(path))
    return cfg, params, meta


# --- float forward ------------------------------------------------------------------------------

def images_to_input(images) -> np.ndarray:
    """uint8 images (n, H, W) -> float (n, H, W) in [-1, 1): ``(pixel - 128) / 128``."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels, got dtype {a.dtype}")
    if a.ndim != 3:
        raise ValueError(f"images must have shape (n, H, W), got {a.shape}")
    return (a.astype(np.float64) - 128.0) / 128.0


def patchify(x, patch: int) -> np.ndarray:
    """(n, H, W) -> (n, patches, patch*patch), row-major over the patch grid and inside a patch."""
    n, H, W = x.shape
    g, w = H // patch, W // patch
    return x.reshape(n, g, patch, w, patch).transpose(0, 1, 3, 2, 4).reshape(n, g * w, patch * patch)


def _erf(x):
    """erf in float64 (Numerical Recipes' erfcc Chebyshev fit: |error| < 1.2e-7 everywhere),
    vectorised; ``math.erf`` per element is too slow for whole test sets."""
    x = np.asarray(x, np.float64)
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


def gelu(x):
    """Exact GELU, ``x Phi(x)`` (erf form)."""
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layernorm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def softmax(s, axis=-1):
    s = s - s.max(axis=axis, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=axis, keepdims=True)


def attention_float_variant(q, k, v, mode: str, mask=None, topk: int | None = None,
                            alive=None):
    """Attention of (n, h, N, d) q, k, v in float64 under ``mode``: softmax, taylor (first-order,
    mean-centred keys), mask (``mask`` (h, N, N), True = pruned) or topk (each row keeps its
    ``topk`` largest scores). ``alive`` (n, N) bools marks the tokens that exist (HeatViT)."""
    d = q.shape[-1]
    n_tok = q.shape[-2]
    alive = np.ones(q.shape[:1] + (n_tok,), bool) if alive is None else alive
    if mode == "taylor":
        w = alive[:, None, :, None].astype(np.float64)
        cnt = w.sum(-2, keepdims=True)
        kh = (k - (k * w).sum(-2, keepdims=True) / cnt) * w
        g = np.swapaxes(kh, -1, -2) @ (v * w)
        num = math.sqrt(d) * (v * w).sum(-2, keepdims=True) + q @ g
        den = cnt * math.sqrt(d) + q @ kh.sum(-2)[..., :, None]
        return num / den
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
    dead = ~alive[:, None, None, :]
    if mode == "mask":
        dead = dead | np.asarray(mask, bool)[None]
    elif mode == "topk":
        s_live = np.where(dead, -np.inf, s)
        kth = -np.sort(-s_live, axis=-1)[..., topk - 1: topk]
        dead = dead | (s_live < kth)
    elif mode != "softmax":
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    s = np.where(dead, -np.inf, s)
    return softmax(s) @ v


SELECTOR_LN_EPS = 1e-5   # the heatvit unit's LayerNorm epsilon (its Config default)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def selector_stage(sp: dict, x, alive, cfg: ViTConfig, record: dict | None = None):
    """One HeatViT token selector on the masked token set, in float64.

    ``x`` (n, T, D) with a package slot as its last row, ``alive`` (n, T) bools. The selector is
    the ``heatvit`` unit's float form (per-head LayerNorm, MLP with the global half, head
    importance, decision ``sum_i w_i (z0 - z1) > 0``, package = keep-score-weighted mean of the
    dropped tokens and any earlier package). Returns the new ``(x, alive)``.
    """
    n, T, D = x.shape
    h, d = cfg.heads, cfg.head_dim
    cand = alive.copy()
    cand[:, 0] = False
    xh = x.reshape(n, T, h, d)
    mu = xh.mean(-1)
    var = xh.var(-1)
    ln = (xh - mu[..., None]) / np.sqrt(var[..., None] + SELECTOR_LN_EPS) * sp["ln.g"] + sp["ln.b"]
    u = gelu(np.einsum("bthi,hoi->btho", ln, sp["w1"]) + sp["b1"])
    half = d // 2
    cw = cand[..., None, None].astype(np.float64)
    g = (u[..., half:] * cw).sum(1) / np.maximum(cw.sum(1), 1)
    cat = np.concatenate([u[..., :half], np.broadcast_to(g[:, None], (n, T, h, half))], -1)
    a2 = gelu(np.einsum("bthi,hoi->btho", cat, sp["w2"]) + sp["b2"])
    a3 = gelu(np.einsum("bthi,hoi->btho", a2, sp["w3"]) + sp["b3"])
    z = np.einsum("bthi,hoi->btho", a3, sp["w4"]) + sp["b4"]
    dz = z[..., 0] - z[..., 1]
    eh = gelu(mu @ sp["v1"].T + sp["c1"])
    hw = _sigmoid(eh @ sp["v2"].T + sp["c2"])
    pi = (hw * _sigmoid(dz)).sum(-1) / hw.sum(-1)
    keep = ((hw * dz).sum(-1) > 0) & cand
    keep[:, T - 1] = False                                # a package is always packed again
    dropped = cand & ~keep
    w = np.where(dropped, pi, 0.0)
    den = w.sum(1)
    pkg = (w[..., None] * x).sum(1) / np.where(den > 0, den, 1.0)[:, None]
    if record is not None:
        sel = cand
        for name, val in (("tokens", x[alive]), ("u", u[sel]), ("a2", a2[sel]), ("a3", a3[sel]),
                          ("hb", eh[sel]), ("logit_diff", dz[sel])):
            record.setdefault(name, []).append(np.abs(val).max(initial=0.0))
    x = x.copy()
    x[:, T - 1] = np.where(dropped.any(1)[:, None], pkg, x[:, T - 1])
    alive = keep.copy()
    alive[:, 0] = True
    alive[:, T - 1] = dropped.any(1)
    return x, alive


def selector_params(params: dict, stage: int) -> dict:
    """The float tensors of selector ``stage`` under their short names (``w1``, ``ln.g``, ...)."""
    prefix = f"sel{stage}."
    return {k[len(prefix):]: np.asarray(v, np.float64) for k, v in params.items()
            if k.startswith(prefix)}


def _layer_mask(params, i, tokens):
    """Layer ``i``'s fixed mask (heads, T, T); a package slot beyond the mask keeps every key."""
    m = np.asarray(params["mask"][i], bool)
    pad = tokens - m.shape[-1]
    return np.pad(m, ((0, 0), (0, pad), (0, pad))) if pad > 0 else m


def forward_float(cfg: ViTConfig, params: dict, images, mode: str = "softmax",
                  selectors: bool = False, checkpoints: dict | None = None,
                  record: dict | None = None) -> np.ndarray:
    """Logits (n, classes) of uint8 ``images`` (n, H, W) in float64.

    ``mode`` is the attention (softmax, taylor, mask, topk); ``selectors`` runs the HeatViT
    stages (dropped tokens are masked out, the package token lives in an extra last row).
    ``checkpoints`` (a dict) receives the residual stream after each block (``block{i}``) and
    ``alive`` masks; ``record`` receives per-layer max-abs statistics for calibration.
    """
    params = {k: (np.asarray(v, np.float64) if k != "mask" else v) for k, v in params.items()}
    x = patchify(images_to_input(images), cfg.patch) @ params["patch.w"] + params["patch.b"]
    n = x.shape[0]
    x = np.concatenate([np.broadcast_to(params["cls"], (n, 1, cfg.dim)), x], axis=1) + params["pos"]
    alive = np.ones(x.shape[:2], bool)
    if selectors:
        x = np.concatenate([x, np.zeros((n, 1, cfg.dim))], axis=1)
        alive = np.concatenate([alive, np.zeros((n, 1), bool)], axis=1)
    h, dh = cfg.heads, cfg.head_dim
    stage = 0

    def rec(name, val):
        if record is not None:
            record.setdefault(name, []).append(float(np.abs(val).max(initial=0.0)))

    for i in range(cfg.depth):
        if selectors and i in cfg.selector_blocks:
            srec = {} if record is not None else None
            x, alive = selector_stage(selector_params(params, stage), x, alive, cfg, srec)
            if record is not None:
                record.setdefault("selectors", []).append({k: float(v[0]) for k, v in srec.items()})
            stage += 1
        p = f"blocks.{i}."
        rec("residual", x[alive])
        rec("ln1_in", x[alive])
        a = layernorm(x, params[p + "ln1.g"], params[p + "ln1.b"], cfg.ln_eps)
        qkv = (a @ params[p + "qkv.w"] + params[p + "qkv.b"]).reshape(n, -1, 3, h, dh)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        live4 = alive[:, None, :, None]
        rec("q", np.where(live4, q, 0))
        rec("k", np.where(live4, k, 0))
        rec("v", np.where(live4, v, 0))
        o = attention_float_variant(q, k, v, mode, mask=_layer_mask(params, i, x.shape[1])
                                    if mode == "mask" else None, topk=cfg.topk, alive=alive)
        rec("attn_out", np.where(live4, o, 0))
        if record is not None and mode == "taylor":
            kc = k - (k * live4).sum(-2, keepdims=True) / live4.sum(-2, keepdims=True)
            rec("taylor_g", np.swapaxes(kc * live4, -1, -2) @ (v * live4))
        x = x + o.transpose(0, 2, 1, 3).reshape(n, -1, cfg.dim) @ params[p + "proj.w"] \
            + params[p + "proj.b"]
        rec("residual", x[alive])
        rec("ln2_in", x[alive])
        a = layernorm(x, params[p + "ln2.g"], params[p + "ln2.b"], cfg.ln_eps)
        hid = gelu(a @ params[p + "fc1.w"] + params[p + "fc1.b"])
        rec("gelu_out", hid[alive])
        x = x + hid @ params[p + "fc2.w"] + params[p + "fc2.b"]
        rec("residual", x[alive])
        if checkpoints is not None:
            checkpoints[f"block{i}"] = x
            checkpoints[f"alive{i}"] = alive
    rec("lnf_in", x[:, 0])
    a = layernorm(x[:, 0], params["ln.g"], params["ln.b"], cfg.ln_eps)
    return a @ params["head.w"] + params["head.b"]


def macs_per_image(cfg: ViTConfig, tokens_per_block=None, attention: str = "softmax",
                   kept_fraction: float = 1.0) -> dict:
    """MACs of one image, split into ``linear`` and ``attention``. ``tokens_per_block`` (one
    count per block) for token pruning; ``attention`` softmax (QK^T + AV over the kept fraction
    of scores) or taylor (2 N d^2 + N d per head)."""
    toks = list(tokens_per_block) if tokens_per_block is not None else [cfg.tokens] * cfg.depth
    D, d, h = cfg.dim, cfg.head_dim, cfg.heads
    linear = cfg.patches * cfg.patch ** 2 * D + D * cfg.classes
    att = 0.0
    for n in toks:
        linear += n * (D * 3 * D + D * D + 2 * D * cfg.mlp)
        if attention == "taylor":
            att += h * (2 * n * d * d + n * d)
        else:
            att += h * 2 * n * n * d * kept_fraction
    return {"linear": int(linear), "attention": int(round(att)), "total": int(round(linear + att))}
