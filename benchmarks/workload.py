"""ViT workload benchmark: the Fashion-MNIST ViT through the four units, integer-only.

Writes ``benchmarks/results/workload.json`` / ``workload.md`` (the table the README quotes:
top-1 on the test images, MACs, cycles and images/s per image for float, int8, each unit and
HeatViT + ViTCoD), the pictures ``workload_heatvit_kept.png`` (patches each selector stage
keeps) and ``workload_vitcod_masks.png`` (the fixed masks), and, unless ``--no-rtl``, replays
every unit call of the first ``--rtl-images`` test images on the RTL (Verilator, random stalls
on every stream) and records bit-exactness.

Usage: ``python benchmarks/workload.py [--data DIR] [--subset] [--rtl-images 2] [--no-rtl]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402


def main(argv=None):
    from vitaccel.golden import fmnist
    from vitaccel.golden import vit as V
    from vitaccel.model import evaluate as E
    from vitaccel.model import pictures, quant as Q

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--subset", action="store_true", help="score the shipped 1,000 images only")
    ap.add_argument("--variants", nargs="+", default=list(E.DEFAULT_VARIANTS))
    ap.add_argument("--rtl-images", type=int, default=2, help="test images replayed on the RTL")
    ap.add_argument("--no-rtl", action="store_true", help="skip the RTL replay")
    ap.add_argument("--merge", action="store_true",
                    help="re-evaluate only --variants and merge them into the saved workload.json")
    ap.add_argument("--rtl-only", action="store_true",
                    help="only the RTL replay, added to the saved workload.json")
    ap.add_argument("--sim", default="verilator", choices=("verilator", "icarus"))
    ap.add_argument("--jobs", type=int, default=2, help="worker processes for the evaluation")
    args, _ = ap.parse_known_args(argv)

    images, labels, what = fmnist.load_test(args.data, subset=args.subset)
    calib = Q.load_calibration_images(512, args.data)
    t0 = time.time()
    if args.rtl_only:              # add the RTL replay to the saved evaluation
        out = json.loads((RESULTS / "workload.json").read_text())
        rows = out["rows"]
    else:
        rows = E.evaluate(args.variants, images, labels, calib, progress=common.progress,
                          jobs=args.jobs)
        if args.merge:             # replace those variants' rows in the saved evaluation
            saved = json.loads((RESULTS / "workload.json").read_text())
            new = {r["variant"]: r for r in rows}
            base = next((r for r in saved["rows"] if r["variant"] == "float"), None)
            for r in rows:
                if base is not None:
                    r["delta_vs_float"] = r["top1"] - base["top1"]
                    r["macs_vs_float"] = r["macs_per_image"] / base["macs_per_image"]
                    if r["variant"] in E.TARGETS:
                        r["target_drop"] = E.TARGETS[r["variant"]]
                        r["target_met"] = bool(-r["delta_vs_float"] * 100 <= r["target_drop"] + 1e-9)
            rows = [new.pop(r["variant"], r) for r in saved["rows"]] + list(new.values())
        out = {"data": what, "calibration": f"first {len(calib)} Fashion-MNIST training images",
               "rows": rows}
    # pictures
    heat = Q.build("heatvit", calib)
    pictures.selector_picture(heat, images[:6], RESULTS / "workload_heatvit_kept.png")
    cfg, params, _ = V.load_params("vitcod")
    from vitaccel.units import vitcod as UC
    theta = Q.build("vitcod", calib).blocks[0].unit["vitcod"].theta_d
    pictures.mask_picture(params["mask"], RESULTS / "workload_vitcod_masks.png", theta)
    out["mask_sparsity"] = float(params["mask"].mean())
    if not args.no_rtl:
        test_images, _ = fmnist.load_subset()    # the RTL replays the first shipped test images
        images = test_images
        recs = E.rtl_check([v for v in args.variants if v != "float"],
                           images[:args.rtl_images], simulator=args.sim,
                           progress=common.progress)
        out["rtl"] = {"images": args.rtl_images, "simulator": args.sim,
                      "stalls": "random valid gaps and ready back-pressure (seed 1)",
                      "calls": len(recs), "bit_exact": sum(r["bit_exact"] for r in recs),
                      "records": recs}
    out["seconds"] = round(time.time() - t0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "workload.json").write_text(json.dumps(out, indent=2, default=str))
    what = out["data"]
    md = [f"Fashion-MNIST ViT (D = 64, 6 blocks, 2 heads x 32, 50 tokens) integer-only through "
          f"the units; {what}; calibration: {out['calibration']}. Cycles at the ULX3S board "
          f"configurations, images/s at the measured ULX3S Fmax of each unit "
          f"(`vitaccel/model/cost.py`).", "", E.format_table(rows), ""]
    if "rtl" in out:
        r = out["rtl"]
        md.append(f"RTL replay: {r['bit_exact']} of {r['calls']} unit calls bit-exact on "
                  f"{r['simulator']} ({r['images']} test images, every block, {r['stalls']}).")
        md.append("")
    md.append(f"ViTCoD masks: {out['mask_sparsity']:.1%} of the attention entries pruned. "
              f"Pictures: `workload_heatvit_kept.png`, `workload_vitcod_masks.png`.")
    (RESULTS / "workload.md").write_text("\n".join(md) + "\n")
    common.progress(f"wrote {RESULTS / 'workload.json'} and workload.md ({out['seconds']} s)")


if __name__ == "__main__":
    main()
