"""Accuracy, work and speed of the ViT through the units: the rows of ``vitaccel eval``.

One row per variant: ``float`` (the float model, NumPy float64), ``int8`` (integer-only, every
unit's arithmetic, dense attention), each unit alone (``heatvit``, ``vitcod``, ``vitality``,
``fact``: its own fine-tuned weights, integer-only) and combinations (``heatvit+vitcod``). Columns:
top-1 on the images given, the difference from the float model, the float top-1 of the
variant's own weights (what the technique costs before integer arithmetic), MACs per image
(linear layers + attention, counted on the tokens and keys each image actually uses), cycles per
image at the ULX3S board configurations (:mod:`vitaccel.model.cost`) and images/s at the
measured Fmax of each unit.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from vitaccel.golden import vit as V
from vitaccel.model import quant as Q

__all__ = ["DEFAULT_VARIANTS", "TARGETS", "evaluate", "format_table", "write_results"]

DEFAULT_VARIANTS = ("float", "int8", "heatvit", "vitcod", "vitality", "fact", "heatvit+vitcod")
#: The issue's accuracy targets: largest allowed drop from the float model (points of top-1).
TARGETS = {"int8": 0.5, "heatvit": 1.0, "vitcod": 1.5, "vitality": 2.0, "fact": 1.0}


class _FloatModel:
    """The float forward of a variant with IntViT's ``forward`` face (for :func:`_map_batches`)."""

    def __init__(self, cfg, params, variant):
        self.cfg, self.params = cfg, params
        self.mode = {"softmax": "softmax", "vitcod": "mask", "vitality": "taylor",
                     "fact": "topk"}[Q.variant_attention(variant)] if variant != "float" else "softmax"
        self.selectors = "heatvit" in variant.split("+")

    def forward(self, images):
        return V.forward_float(self.cfg, self.params, images, self.mode, self.selectors), {}


def _float_top1(cfg, params, variant, images, labels, batch, jobs=1):
    model = _FloatModel(cfg, params, variant)
    starts = list(range(0, len(images), batch))
    pred = [logits.argmax(1) for logits, _ in _map_batches(model, images, starts, batch, jobs)]
    return float((np.concatenate(pred) == labels).mean())


def _macs(cfg, variant, model, stats) -> dict:
    toks = stats["tokens"].mean(0) if stats and "tokens" in stats else None
    kind = Q.variant_attention(variant) if variant != "float" else "softmax"
    if kind == "vitality":
        return V.macs_per_image(cfg, toks, attention="taylor")
    frac = 1.0
    if kind == "vitcod":
        frac = float((~model.masks).mean())
    elif kind == "fact":
        frac = stats["fact_kept"] / stats["fact_scores"]
    return V.macs_per_image(cfg, toks, attention="softmax", kept_fraction=frac)


def evaluate(variants=DEFAULT_VARIANTS, images=None, labels=None, calibration_images=None,
             batch: int = 500, progress=print, cost: bool = True, jobs: int = 1) -> list[dict]:
    """One result row per variant (see the module docstring); ``jobs`` > 1 runs batches of
    images in that many forked worker processes (the integer model is plain NumPy)."""
    if images is None:
        from vitaccel.golden import fmnist
        images, labels, _ = fmnist.load_test(subset=True)
    if calibration_images is None:
        calibration_images = Q.load_calibration_images()
    rows = []
    float_top1 = None
    for variant in variants:
        t0 = time.time()
        cfg, params = Q.variant_params(variant)
        row = {"variant": variant, "images": int(len(images))}
        if variant == "float":
            top1 = _float_top1(cfg, params, "float", images, labels, batch, jobs)
            stats, model = {"tokens": np.full((1, cfg.depth), cfg.tokens)}, None
            row["float_top1_own_weights"] = top1
        else:
            model = Q.calibrate(cfg, params, variant, calibration_images)
            preds, tok, agg = [], [], {}
            starts = list(range(0, len(images), batch))
            for i, (logits, st) in zip(starts, _map_batches(model, images, starts, batch, jobs)):
                preds.append(logits.argmax(1))
                tok.append(st["tokens"])
                for k, v in st.items():
                    if k not in ("tokens", "positions"):
                        agg[k] = agg.get(k, 0) + v
                if progress and len(images) > batch:
                    progress(f"[eval {variant}] {min(i + batch, len(images))}/{len(images)} "
                             f"images ({time.time() - t0:.0f} s)")
            stats = {"tokens": np.concatenate(tok), **agg}
            row["layer_errors"] = Q.layer_errors(model, params, images[:64])
            top1 = float((np.concatenate(preds) == labels).mean())
            row["float_top1_own_weights"] = _float_top1(cfg, params, variant, images, labels,
                                                        batch, jobs)
        row["top1"] = top1
        if variant == "float":
            float_top1 = top1
        row["delta_vs_float"] = None if float_top1 is None else top1 - float_top1
        row["tokens_per_block"] = [round(float(t), 2) for t in stats["tokens"].mean(0)]
        macs = _macs(cfg, variant, model, stats)
        row["macs_per_image"] = macs["total"]
        row["macs_linear"] = macs["linear"]
        row["macs_attention"] = macs["attention"]
        row["cycles_per_image"] = row["images_per_s"] = None
        if cost and variant != "float":        # the float model has no hardware to count
            from vitaccel.model import cost as C
            row.update(C.variant_cost(variant, cfg, model, stats))
        target = TARGETS.get(variant)
        if target is not None and row["delta_vs_float"] is not None:
            row["target_drop"] = target
            row["target_met"] = bool(-row["delta_vs_float"] * 100 <= target + 1e-9)
        row["seconds"] = round(time.time() - t0, 1)
        if progress:
            progress(f"[eval {variant}] top-1 {top1:.4f} ({row['seconds']} s)")
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "float"), None)
    if base is not None:
        for r in rows:
            r["macs_vs_float"] = r["macs_per_image"] / base["macs_per_image"]
    return rows


_WORKER_MODEL = None


def _worker_forward(args):
    images = args
    return _WORKER_MODEL.forward(images)


def _map_batches(model, images, starts, batch, jobs):
    """``model.forward`` of each batch, in order; in ``jobs`` forked processes when > 1."""
    chunks = [images[i:i + batch] for i in starts]
    if jobs <= 1 or len(chunks) < 2:
        for c in chunks:
            yield model.forward(c)
        return
    import multiprocessing as mp
    global _WORKER_MODEL
    _WORKER_MODEL = model
    with mp.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_worker_forward, chunks)
    _WORKER_MODEL = None


def format_table(rows: list[dict]) -> str:
    head = ("| variant | top-1 | vs float (points) | float top-1 of its weights | MACs/image | "
            "MACs vs float | cycles/image | images/s | target |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.get("delta_vs_float")
        delta = "" if d is None or r["variant"] == "float" else f"{d * 100:+.2f}"
        tgt = ""
        if "target_drop" in r:
            tgt = (f"<= -{r['target_drop']} : " + ("met" if r["target_met"] else
                   f"missed by {-d * 100 - r['target_drop']:.2f}"))
        cyc = r.get("cycles_per_image")
        ips = r.get("images_per_s")
        lines.append(f"| {r['variant']} | {r['top1'] * 100:.2f} % | {delta} | "
                     f"{r['float_top1_own_weights'] * 100:.2f} % | {r['macs_per_image']:,} | "
                     f"{r.get('macs_vs_float', 1):.3f} | {'' if cyc is None else f'{cyc:,}'} | "
                     f"{'' if ips is None else f'{ips:,.0f}'} | {tgt} |")
    return "\n".join(lines)


def write_results(rows, json_path=None, md_path=None, header: str = ""):
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(json_path) + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2, default=lambda o: o.item()
                                  if isinstance(o, np.generic) else str(o)))
        tmp.replace(json_path)
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text((header + "\n\n" if header else "") + format_table(rows) + "\n")


def rtl_check(variants, images, simulator: str = "verilator", stall_seed: int = 1,
              progress=print, units_only=None) -> list[dict]:
    """Replay every unit call the integer model makes on ``images`` on the unit's RTL (random
    valid gaps and ready back-pressure on every stream, seeded) and compare bit for bit with the
    captured golden outputs. One record per call: variant, unit, block, image, bit_exact,
    mismatches, cycles."""
    from vitaccel import units as U
    records = []
    seen = set()
    for variant in variants:
        model = Q.build(variant)
        cap = {"images": set(range(len(images))), "calls": []}
        model.forward(images, capture=cap)
        for call in cap["calls"]:
            if units_only and call["unit"] not in units_only:
                continue
            key = (call["unit"], call["block"], call["image"], repr(call["config"]),
                   _digest(call["inputs"]))
            if key in seen:                 # e.g. the same dense attention in two variants
                continue
            seen.add(key)
            u = U.get(call["unit"])
            t0 = time.time()
            got, stats = u.simulate(call["config"], **call["inputs"], simulator=simulator,
                                    stalls=stall_seed)
            problems = u.compare(call["outputs"], got)
            rec = {"variant": variant, "unit": call["unit"], "block": call["block"],
                   "image": call["image"], "bit_exact": not problems,
                   "mismatches": problems[:3], "cycles_with_stalls": int(stats.get("cycles", 0)),
                   "seconds": round(time.time() - t0, 1)}
            records.append(rec)
            if progress:
                progress(f"[rtl] {variant} {call['unit']} block {call['block']} image "
                         f"{call['image']}: {'bit-exact' if not problems else problems[0]} "
                         f"({rec['seconds']} s)")
    return records


def _digest(inputs) -> str:
    import hashlib
    h = hashlib.sha1()
    for k in sorted(inputs):
        v = inputs[k]
        h.update(k.encode())
        h.update(np.asarray(v).tobytes() if isinstance(v, (np.ndarray, bool, int)) else
                 repr(v).encode())
    return h.hexdigest()
