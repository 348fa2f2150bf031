"""Train the Fashion-MNIST ViT and its four unit variants with JAX + optax (the ``train`` extra).

``python -m vitaccel.train float`` trains the DeiT-style model of :mod:`vitaccel.golden.vit` from
scratch; ``heatvit``, ``vitcod``, ``vitality`` and ``fact`` fine-tune ``float.npz`` with each
paper's technique in the loop, distilled from the float model:

* ``heatvit``: token selectors (the ``heatvit`` unit's float form) before the blocks in
  ``ViTConfig.selector_blocks``; keep decisions are the unit's own rule, decision logit
  ``sum_i w_i (z0 - z1) > 0``, hard in the forward pass and a sigmoid in the backward pass
  (straight-through); dropped tokens are masked out of attention and merged into a package token
  (the unit's keep-score-weighted mean), and a keep-ratio loss pulls each stage towards its
  target (DynamicViT / HeatViT), and a hinge loss keeps decision logits at least
  ``SELECTOR_MARGIN`` from 0, well above the unit's Q8 logit resolution;
* ``vitcod``: fixed masks from the float model's own attention maps averaged over calibration
  images (:func:`vitaccel.golden.vitcod.prune_by_information`, ``theta_p`` searched for the target
  sparsity), then fine-tuned with the masks fixed;
* ``vitality``: first-order Taylor attention with mean-centred keys in place of softmax;
* ``fact``: each query row keeps only its ``ViTConfig.topk`` largest scores;
* ``heatvit+vitcod``: both at once, fine-tuned from ``heatvit.npz`` with the masks of
  ``vitcod.npz`` (train those two first); the package token attends to and from every token.

Everything is seeded; ``make train`` regenerates every shipped weight file. JAX runs on the CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise SystemExit(f"vitaccel.train needs JAX and optax: pip install -e '.[train]' ({e})")

from vitaccel.golden import fmnist
from vitaccel.golden import vit as V

SELECTOR_LN_EPS = V.SELECTOR_LN_EPS
#: HeatViT training pushes every candidate's decision logit at least this far from 0 (a hinge
#: loss, weight SELECTOR_MARGIN_WEIGHT per stage): 64 steps of the unit's Q8 logit, so int8
#: tokens and the unit's rounding cannot flip a decision that float makes. The hinge is off for
#: the first epoch and ramps up over the next: switched on from the start, it pushed the
#: untrained selectors' logits (all near 0) away from 0 before the keep-ratio loss had shaped
#: them, distillation favoured keeping, and the selectors ended up keeping every token.
SELECTOR_MARGIN = 0.25
SELECTOR_MARGIN_WEIGHT = 1.0
#: Weight of the keep-ratio loss (squared distance of each stage's kept fraction from its
#: target): strong enough that the margin hinge cannot push a stage far from its target (at 2.0
#: stage 2 fell to 11 % kept).
KEEP_RATIO_WEIGHT = 20.0


# --- parameters ---------------------------------------------------------------------------------

def init_params(cfg: V.ViTConfig, seed: int, variant: str = "float") -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in V.param_shapes(cfg, variant).items():
        leaf = name.rsplit(".", 1)[-1]
        if name == "mask":
            continue
        if leaf == "g":
            out[name] = np.ones(shape, np.float32)
        elif leaf in ("b", "b1", "b2", "b3", "b4", "c1", "c2") or name.endswith(".b"):
            out[name] = np.zeros(shape, np.float32)
        elif name in ("cls", "pos"):
            out[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        elif name.startswith("sel"):      # (out, in) or (h, out, in): PyTorch's uniform init
            bound = 1.0 / math.sqrt(shape[-1])
            out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
        else:                             # (in, out) linear: truncated-normal-like std 0.02
            out[name] = np.clip(0.02 * rng.standard_normal(shape), -0.04, 0.04).astype(np.float32)
    return out


# --- the model in JAX (mirrors vitaccel.golden.vit.forward_float) --------------------------------

def _ln(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * g + b


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


def _attention(q, k, v, mode, mask, topk, alive):
    """q, k, v (B, h, T, d); alive (B, T) in [0, 1] (hard forward, straight-through)."""
    d = q.shape[-1]
    if mode == "taylor":
        w = alive[:, None, :, None]
        cnt = w.sum(-2, keepdims=True)
        kh = (k - (k * w).sum(-2, keepdims=True) / cnt) * w
        g = jnp.swapaxes(kh, -1, -2) @ (v * w)
        num = math.sqrt(d) * (v * w).sum(-2, keepdims=True) + q @ g
        den = cnt * math.sqrt(d) + q @ kh.sum(-2)[..., :, None]
        return num / den
    s = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(d)
    if mode == "mask":
        s = jnp.where(mask[None], -1e9, s)
    elif mode == "topk":
        kth = jax.lax.top_k(jax.lax.stop_gradient(s), topk)[0][..., -1:]
        s = jnp.where(s < kth, -1e9, s)
    s = s - jax.lax.stop_gradient(s.max(-1, keepdims=True))
    p = jnp.exp(s) * alive[:, None, None, :]
    return (p / (p.sum(-1, keepdims=True) + 1e-9)) @ v


def _selector(sp, x, alive, cfg, key, train):
    """One HeatViT stage: (x, alive, kept fraction of the candidates)."""
    B, T, D = x.shape
    h, d = cfg.heads, cfg.head_dim
    cand = alive.at[:, 0].set(0.0)                      # CLS is never a candidate
    pkg_slot = jnp.zeros((T,)).at[T - 1].set(1.0)
    xh = x.reshape(B, T, h, d)
    mu = xh.mean(-1)
    var = ((xh - mu[..., None]) ** 2).mean(-1)
    ln = (xh - mu[..., None]) * jax.lax.rsqrt(var[..., None] + SELECTOR_LN_EPS) * sp["ln.g"] + sp["ln.b"]
    u = _gelu(jnp.einsum("bthi,hoi->btho", ln, sp["w1"]) + sp["b1"])
    half = d // 2
    g = (u[..., half:] * cand[..., None, None]).sum(1) / cand.sum(1)[:, None, None]   # (B, h, d/2)
    cat = jnp.concatenate([u[..., :half], jnp.broadcast_to(g[:, None], (B, T, h, half))], -1)
    a2 = _gelu(jnp.einsum("bthi,hoi->btho", cat, sp["w2"]) + sp["b2"])
    a3 = _gelu(jnp.einsum("bthi,hoi->btho", a2, sp["w3"]) + sp["b3"])
    z = jnp.einsum("bthi,hoi->btho", a3, sp["w4"]) + sp["b4"]
    dz = z[..., 0] - z[..., 1]                                               # (B, T, h)
    hw = jax.nn.sigmoid(_gelu(mu @ sp["v1"].T + sp["c1"]) @ sp["v2"].T + sp["c2"])
    logit = (hw * dz).sum(-1)
    pi = (hw * jax.nn.sigmoid(dz)).sum(-1) / hw.sum(-1)
    # The unit keeps a token iff the logit is > 0, so training uses that very decision in the
    # forward pass (straight-through: the sigmoid's gradient in the backward pass). Gumbel noise
    # on the decision (tried first) let the keep-ratio loss be met by the noise alone: the
    # trained logits were all positive and the noise-free selectors kept every token.
    soft = jax.nn.sigmoid(logit)
    hard = (logit > 0).astype(x.dtype)
    keep = (hard + soft - jax.lax.stop_gradient(soft)) * cand * (1.0 - pkg_slot)
    dropped = cand - keep                                # candidates not kept (incl. a package)
    wgt = dropped * pi
    den = wgt.sum(1)
    pkg = (wgt[..., None] * x).sum(1) / jnp.maximum(den, 1e-9)[:, None]
    any_dropped = (jax.lax.stop_gradient(dropped).sum(1) > 0.5).astype(x.dtype)
    x = x.at[:, T - 1].set(pkg)
    alive = keep.at[:, 0].set(1.0).at[:, T - 1].set(any_dropped)
    n_cand = jax.lax.stop_gradient((cand * (1.0 - pkg_slot)).sum(1))
    kept_frac = (keep.sum(1)) / jnp.maximum(n_cand, 1.0)
    # The unit decides on the logit in Q8 (1/256 steps): a logit within a few steps of 0 can
    # flip between the float and the integer selector, so training keeps them away from 0.
    tie = jax.nn.relu(SELECTOR_MARGIN - jnp.abs(logit)) * cand * (1.0 - pkg_slot)
    tie_frac = tie.sum(1) / jnp.maximum(n_cand, 1.0) / SELECTOR_MARGIN
    return x, alive, kept_frac, tie_frac


def forward(params, images, cfg: V.ViTConfig, mode: str = "softmax", selectors: bool = False,
            key=None, train: bool = False, want_attention: bool = False):
    """Logits (B, classes) and aux (kept fractions per selector stage, attention maps)."""
    B = images.shape[0]
    P = cfg.patch
    x = images.reshape(B, cfg.grid, P, cfg.grid, P).transpose(0, 1, 3, 2, 4).reshape(B, cfg.patches, P * P)
    x = x @ params["patch.w"] + params["patch.b"]
    x = jnp.concatenate([jnp.broadcast_to(params["cls"], (B, 1, cfg.dim)), x], 1) + params["pos"]
    T = cfg.tokens
    alive = jnp.ones((B, T), x.dtype)
    if selectors:
        x = jnp.concatenate([x, jnp.zeros((B, 1, cfg.dim), x.dtype)], 1)
        alive = jnp.concatenate([alive, jnp.zeros((B, 1), x.dtype)], 1)
        T += 1
    h, dh = cfg.heads, cfg.head_dim
    kept, ties, maps = [], [], []
    stage = 0
    for i in range(cfg.depth):
        if selectors and i in cfg.selector_blocks:
            sp = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"sel{stage}.")}
            key, sub = jax.random.split(key) if key is not None else (None, None)
            x, alive, frac, tie = _selector(sp, x, alive, cfg, sub, train)
            kept.append(frac)
            ties.append(tie)
            stage += 1
        p = f"blocks.{i}."
        a = _ln(x, params[p + "ln1.g"], params[p + "ln1.b"], cfg.ln_eps)
        qkv = (a @ params[p + "qkv.w"] + params[p + "qkv.b"]).reshape(B, T, 3, h, dh)
        q, k, v = (qkv[:, :, j].transpose(0, 2, 1, 3) for j in range(3))
        if want_attention:
            s = q @ jnp.swapaxes(k, -1, -2) / math.sqrt(dh)
            maps.append(jax.nn.softmax(s, -1))
        mask = None
        if mode == "mask":      # a package slot beyond the mask attends to and from every token
            pad = T - params["mask"].shape[-1]
            mask = jnp.pad(params["mask"][i], ((0, 0), (0, pad), (0, pad)))
        o = _attention(q, k, v, mode, mask, cfg.topk, alive)
        x = x + o.transpose(0, 2, 1, 3).reshape(B, T, cfg.dim) @ params[p + "proj.w"] + params[p + "proj.b"]
        a = _ln(x, params[p + "ln2.g"], params[p + "ln2.b"], cfg.ln_eps)
        x = x + _gelu(a @ params[p + "fc1.w"] + params[p + "fc1.b"]) @ params[p + "fc2.w"] + params[p + "fc2.b"]
    a = _ln(x[:, 0], params["ln.g"], params["ln.b"], cfg.ln_eps)
    return a @ params["head.w"] + params["head.b"], {"kept": kept, "ties": ties, "attention": maps}


# --- data ---------------------------------------------------------------------------------------

def _augment(rng, imgs, shift: int = 2):
    """Random shift by up to `shift` pixels (zero-padded crop) and horizontal flip, on float
    images."""
    B = len(imgs)
    pad = np.pad(imgs, ((0, 0), (shift, shift), (shift, shift)), constant_values=-1.0)
    dy, dx = rng.integers(0, 2 * shift + 1, B), rng.integers(0, 2 * shift + 1, B)
    rows = dy[:, None] + np.arange(28)[None]
    cols = dx[:, None] + np.arange(28)[None]
    out = pad[np.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = rng.random(B) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out


MODES = V.MODES


def evaluate(params, cfg, variant, images, labels, batch=1000):
    mode, sel = MODES[variant]
    fwd = jax.jit(lambda p, x: forward(p, x, cfg, mode, sel)[0])
    x = V.images_to_input(images).astype(np.float32)
    correct = 0
    kept = []
    for i in range(0, len(x), batch):
        logits = np.asarray(fwd(params, x[i:i + batch]))
        correct += int((logits.argmax(1) == labels[i:i + batch]).sum())
    return correct / len(x)


def average_attention(params, cfg, images, batch=256) -> np.ndarray:
    """(depth, heads, N, N) attention maps of the float model averaged over ``images``."""
    fwd = jax.jit(lambda p, x: forward(p, x, cfg, "softmax", want_attention=True)[1]["attention"])
    x = V.images_to_input(images).astype(np.float32)
    total = None
    for i in range(0, len(x), batch):
        maps = np.stack([np.asarray(m).sum(0) for m in fwd(params, x[i:i + batch])])
        total = maps if total is None else total + maps
    return total / len(x)


def derive_masks(attn: np.ndarray, sparsity: float) -> tuple[np.ndarray, float]:
    """Fixed masks (True = pruned) at >= ``sparsity`` overall: one ``theta_p`` for every head,
    the largest whose masks reach the target (bisection)."""
    from vitaccel.golden.vitcod import prune_by_information

    def masks(theta):
        return np.stack([np.stack([prune_by_information(a / a.sum(-1, keepdims=True), theta)
                                   for a in layer]) for layer in attn])
    lo, hi = 1e-3, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if masks(mid).mean() >= sparsity:
            lo = mid
        else:
            hi = mid
    m = masks(lo)
    return m, lo


# --- training -----------------------------------------------------------------------------------

def train(variant: str, epochs: int, out: Path, seed: int = 0, lr: float | None = None,
          batch: int = 256, data_dir=None, sparsity: float = 0.9, log=print,
          init=None, shift: int = 2, keep: float | None = None) -> dict:
    cfg = V.ViTConfig()
    if keep is not None:
        if not 0.0 < keep < 1.0:
            raise SystemExit(f"--keep must be in (0, 1), got {keep}")
        cfg = dataclasses.replace(cfg, keep_ratios=(keep,) * len(cfg.selector_blocks))
    folder = fmnist.find_data_dir(data_dir)
    if folder is None:
        raise SystemExit("training needs the full Fashion-MNIST (apt install dataset-fashion-mnist, "
                         "or --data DIR with the four IDX files)")
    xtr, ytr = fmnist.load_split(folder, "train")
    xte, yte = fmnist.load_split(folder, "test")
    mode, sel = MODES[variant]
    meta = {"seed": seed, "epochs": epochs, "batch": batch, "augment_shift": shift,
            "data": "Fashion-MNIST train (60,000)"}
    teacher = None
    if variant == "float":
        params = init_params(cfg, seed)
        if init is not None:            # continue training (a further cosine cycle)
            _, params, prev = V.load_params("float", init)
            meta["continued_from"] = {"epochs": prev.get("epochs"),
                                      "test_top1_jax": prev.get("test_top1_jax"),
                                      "history": prev.get("history")}
        lr = lr or 2e-3
    else:
        _, base, _ = V.load_params("float", out.parent / "float.npz")
        teacher = {k: jnp.asarray(v) for k, v in base.items()}
        params = {**init_params(cfg, seed, variant), **base}
        lr = lr or 5e-4
        if variant == "heatvit+vitcod":
            for part in ("heatvit", "vitcod"):
                path = out.parent / f"{part}.npz"
                if not path.is_file():
                    raise SystemExit(f"heatvit+vitcod fine-tunes {part}.npz: train {part} first "
                                     f"(no {path})")
            _, params, _ = V.load_params("heatvit", out.parent / "heatvit.npz")
            _, masked, vmeta = V.load_params("vitcod", out.parent / "vitcod.npz")
            params = {**params, "mask": masked["mask"]}
            meta.update(theta_p=vmeta.get("theta_p"), sparsity=float(masked["mask"].mean()),
                        mask_calibration="the masks of vitcod.npz")
        elif variant == "vitcod":
            calib = xtr[:1024]
            attn = average_attention(teacher, cfg, calib)
            params["mask"], theta = derive_masks(attn, sparsity)
            meta.update(theta_p=theta, sparsity=float(params["mask"].mean()),
                        mask_calibration="first 1,024 training images")
            log(f"[train vitcod] masks at theta_p = {theta:.4f}: sparsity "
                f"{params['mask'].mean():.4f}")
    meta["lr"] = lr
    fixed = {k: jnp.asarray(v) for k, v in params.items() if k == "mask"}
    trainable = {k: jnp.asarray(v) for k, v in params.items() if k != "mask"}
    steps_per_epoch = len(xtr) // batch
    total = steps_per_epoch * epochs
    # A fresh float model warms up for two epochs; fine-tuning and a continued cycle need only
    # enough steps for Adam's moment estimates to settle.
    warm_epochs = 2 if variant == "float" and init is None else 0
    warm = min(steps_per_epoch * warm_epochs + 100, total // 4)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, total, lr * 0.01)
    decay_mask = {k: (v.ndim >= 2 and k not in ("pos",)) for k, v in trainable.items()}
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(sched, weight_decay=0.05, mask=decay_mask))
    state = opt.init(trainable)
    targets = jnp.asarray(cfg.keep_ratios)

    def loss_fn(tp, x, y, key, margin_w):
        p = {**tp, **fixed}
        logits, aux = forward(p, x, cfg, mode, sel, key, train=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss = ce
        if teacher is not None:
            t_logits, _ = forward(teacher, x, cfg, "softmax")
            t = jax.nn.softmax(t_logits)
            loss = loss + (t * (jnp.log(t + 1e-9) - jax.nn.log_softmax(logits))).sum(-1).mean()
        kept = jnp.zeros(0)
        if sel:
            kept = jnp.stack([k.mean() for k in aux["kept"]])
            loss = loss + KEEP_RATIO_WEIGHT * ((kept - targets) ** 2).sum()
            loss = loss + margin_w * jnp.stack([t.mean() for t in aux["ties"]]).sum()
        return loss, ((logits.argmax(-1) == y).mean(), kept)

    @jax.jit
    def step(tp, st, x, y, key, margin_w):
        (loss, (acc, kept)), grads = jax.value_and_grad(loss_fn, has_aux=True)(tp, x, y, key,
                                                                                 margin_w)
        updates, st = opt.update(grads, st, tp)
        return optax.apply_updates(tp, updates), st, loss, acc, kept

    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    xtr_f = V.images_to_input(xtr).astype(np.float32)
    t0 = time.time()
    history = []
    for ep in range(epochs):
        order = rng.permutation(len(xtr))
        losses, accs, kepts = [], [], []
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            xb = _augment(rng, xtr_f[idx], shift).astype(np.float32)
            key, sub = jax.random.split(key)
            ramp = 1.0 if variant != "heatvit" else \
                min(max((ep * steps_per_epoch + s) / steps_per_epoch - 1.0, 0.0), 1.0)
            trainable, state, loss, acc, kept = step(trainable, state, xb,
                                                     ytr[idx].astype(np.int32), sub,
                                                     np.float32(SELECTOR_MARGIN_WEIGHT * ramp))
            losses.append(float(loss))
            accs.append(float(acc))
            kepts.append(np.asarray(kept))
        top1 = evaluate({**trainable, **fixed}, cfg, variant, xte, yte)
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)),
                        "train_acc": float(np.mean(accs)), "test_top1": top1,
                        "minutes": (time.time() - t0) / 60})
        keep_txt = ""
        if sel:
            history[-1]["kept_fraction"] = np.mean(kepts, 0).tolist()
            keep_txt = " kept " + "/".join(f"{k:.2f}" for k in np.mean(kepts, 0))
        log(f"[train {variant}] epoch {ep + 1}/{epochs}: loss {np.mean(losses):.4f} train "
            f"{np.mean(accs):.4f} test {top1:.4f}{keep_txt} ({(time.time() - t0) / 60:.1f} min)")
        sys.stdout.flush()
        meta.update(history=history, test_top1_jax=top1, train_minutes=(time.time() - t0) / 60)
        final = {k: np.asarray(v) for k, v in {**trainable, **fixed}.items()}
        meta["reference_logits"] = reference_logits(final, cfg, variant)
        V.save_params(out, cfg, final, variant, meta)
    return meta


def reference_logits(params, cfg, variant, count: int = 8) -> list:
    """JAX logits of the first ``count`` shipped test images, stored in the weight file's meta
    so the NumPy float forward is checked against the training framework without JAX."""
    images, _ = fmnist.load_subset()
    mode, sel = MODES[variant]
    x = V.images_to_input(images[:count]).astype(np.float32)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    return np.asarray(forward(p, x, cfg, mode, sel)[0], np.float64).tolist()


def stamp(path: Path):
    """Add :func:`reference_logits` to an existing weight file."""
    cfg, params, meta = V.load_params(path=path, variant=json.loads(
        str(np.load(path)["__meta__"]))["variant"])
    meta["reference_logits"] = reference_logits(params, cfg, meta["variant"])
    variant = meta.pop("variant")
    meta.pop("config", None)
    V.save_params(path, cfg, params, variant, meta)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m vitaccel.train",
        description="Train the Fashion-MNIST ViT (float) or fine-tune a unit variant from "
                    "float.npz. Writes golden/data/vit_fmnist/<variant>.npz after every epoch.")
    ap.add_argument("variant", choices=V.VARIANTS)
    ap.add_argument("--stamp", action="store_true", help="only add the JAX reference logits to "
                    "the existing weight file")
    ap.add_argument("--epochs", type=int, default=None,
                    help="default: 30 for float, 4 for the variants")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3 "
                    "float, 5e-4 fine-tuning)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.9, help="vitcod mask sparsity target")
    ap.add_argument("--data", default=None, help="folder with the four Fashion-MNIST IDX files")
    ap.add_argument("--out", default=None, help="output .npz (default: the shipped weight file)")
    ap.add_argument("--init", default=None, help="float only: continue from this weight file "
                    "(one more warm-up + cosine cycle) instead of a fresh initialisation")
    ap.add_argument("--shift", type=int, default=2, help="augmentation: random shift of up to "
                    "this many pixels (plus a horizontal flip); 0 disables the shift")
    ap.add_argument("--keep", type=float, default=None, help="heatvit: keep-ratio target of "
                    "every selector stage (default: ViTConfig.keep_ratios)")
    args = ap.parse_args(argv)
    epochs = args.epochs or (30 if args.variant == "float" else 4)
    out = Path(args.out) if args.out else V.WEIGHTS_DIR / f"{args.variant}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.stamp:
        stamp(out)
        return
    train(args.variant, epochs, out, seed=args.seed, lr=args.lr, data_dir=args.data,
          sparsity=args.sparsity, init=args.init, shift=args.shift, keep=args.keep)


if __name__ == "__main__":
    main()
