"""ViTCoD benchmark: all 36 heads of the authors' DeiT-Tiny mask (N = 197, d = 64) on the RTL.

For every (layer, head): random int8 Q/K/V (seeded), the unit's default Config (8 lines x 8
MACs), Verilator without stalls; checks RTL == golden bit for bit and records per-engine cycles,
MAC utilisation, engine efficiency, the dense-attention baseline on the same MAC budget and the
authors' analytical cycle model at the same lines x MACs. Writes
``benchmarks/results/vitcod.json`` and ``benchmarks/results/vitcod.md``.

Definitions (per head; f = ceil(d / MACs_per_line)):

* compute cycles = SDDMM phase + softmax/SpMM phase (from the core's counters; loading the
  buffers and the normaliser tail after the last row are reported separately, as the authors'
  model reports compute and DRAM separately);
* engine ideal cycles = 2 * work * f / lines_engine with work = G * N (dense) or nnz (sparse):
  every score and every e * v row costs f line-cycles;
* issue efficiency = ideal / cycles in which the engine issued work (1.0 = no idle lane while
  issuing: partial line groups are the loss); phase efficiency = ideal / compute cycles;
* MAC utilisation = 2 * kept scores * d / (lines * MACs * compute cycles), masked entries of the
  dense block do not count as useful;
* dense baseline = 2 * N^2 * f / lines: every score and the full S V at 100 % utilisation.

Board builds (:func:`common.board_builds`): the ULX3S default config, nextpnr asked for the
issue's 75 MHz; ``--saved-builds`` takes the report of an earlier ``vitaccel build vitcod``.

Usage: ``python benchmarks/vitcod.py [--heads L:H,...] [--sim verilator] [--no-build]``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402



def run(heads=None, simulator="verilator", seed=0):
    from vitaccel import units
    from vitaccel.golden import vitcod as gv
    u = units.get("vitcod")
    cfg = u.Config()
    pruned = gv.load_real_mask()
    n, d = 197, 64
    L, P = cfg.lines, cfg.macs_per_line
    f = -(-d // P)
    heads = heads or [(layer, head) for layer in range(12) for head in range(3)]
    rows = []
    for layer, head in heads:
        rng = np.random.default_rng(seed + 3 * layer + head)
        inp = {name: rng.integers(-128, 128, (1, n, d), dtype=np.int8) for name in "qkv"}
        inp["mask"] = pruned[layer, head:head + 1]
        t0 = time.time()
        got, stats = u.simulate(cfg, **inp, simulator=simulator, stalls=False)
        wall = time.time() - t0
        bit_exact = not u.compare(u.golden(cfg, **inp), got)
        h = stats["heads"][0]
        cm = gv.compile_mask(inp["mask"][0], cfg.theta_d)
        ld, ls = h["lines_d"], h["lines_s"]
        compute = h["sddmm_cycles"] + h["spmm_cycles"]
        ideal_d, ideal_s = gv.engine_ideal_cycles(cm.g, n, cm.nnz, d, ld, ls, P)
        kept = int((~inp["mask"][0]).sum())
        baseline = gv.dense_baseline_cycles(n, d, L, P)
        model = gv.analytical_cycles(cm.g, n, cm.nnz, d, 3, L, pe_w=P * 3)
        row = {
            "layer": layer, "head": head, "G": cm.g, "nnz_sparse": cm.nnz, "kept": kept,
            "lines_d": ld, "lines_s": ls, "bit_exact": bit_exact, "error_flag": h["error"],
            "cycles_total": h["cycles_total"], "sddmm_cycles": h["sddmm_cycles"],
            "spmm_cycles": h["spmm_cycles"], "compute_cycles": compute,
            "load_and_tail_cycles": h["cycles"] - compute,
            "dense_busy": h["dense_busy"], "sparse_busy": h["sparse_busy"],
            "dense_ideal": ideal_d, "sparse_ideal": ideal_s,
            "dense_issue_eff": ideal_d / h["dense_busy"] if h["dense_busy"] else None,
            "sparse_issue_eff": ideal_s / h["sparse_busy"] if h["sparse_busy"] else None,
            "dense_phase_eff": ideal_d / compute if ideal_d else None,
            "sparse_phase_eff": ideal_s / compute if ideal_s else None,
            "mac_utilisation": 2 * kept * d / (L * P * compute),
            "dense_baseline_cycles": baseline, "speedup_vs_dense": baseline / compute,
            "model_cycles": model["total"], "model_sddmm": model["sddmm"],
            "model_spmm": model["spmm"], "sim_seconds": round(wall, 2),
        }
        rows.append(row)
        print(f"L{layer:2d}H{head} G={cm.g:3d} nnz={cm.nnz:5d} split={ld}/{ls} "
              f"compute={compute:6d} total={h['cycles_total']:6d} model={model['total']:6d} "
              f"x{row['speedup_vs_dense']:.2f} util={row['mac_utilisation']:.3f} "
              f"{'OK' if bit_exact else 'MISMATCH'} ({wall:.1f}s)", flush=True)
    return cfg, rows


def summarise(cfg, rows):
    def total(key):
        return sum(r[key] for r in rows)

    def mean(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return sum(vals) / len(vals) if vals else None

    def minimum(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return min(vals) if vals else None

    return {
        "heads": len(rows), "all_bit_exact": all(r["bit_exact"] for r in rows),
        "compute_cycles": total("compute_cycles"), "cycles_total": total("cycles_total"),
        "sddmm_cycles": total("sddmm_cycles"), "spmm_cycles": total("spmm_cycles"),
        "dense_baseline_cycles": total("dense_baseline_cycles"),
        "speedup_vs_dense": total("dense_baseline_cycles") / total("compute_cycles"),
        "model_cycles": total("model_cycles"),
        "mac_utilisation": 2 * 64 * total("kept") / (cfg.lines * cfg.macs_per_line
                                                     * total("compute_cycles")),
        "dense_issue_eff_mean": mean("dense_issue_eff"),
        "dense_issue_eff_min": minimum("dense_issue_eff"),
        "sparse_issue_eff_mean": mean("sparse_issue_eff"),
        "sparse_issue_eff_min": minimum("sparse_issue_eff"),
        "dense_phase_eff_mean": mean("dense_phase_eff"),
        "sparse_phase_eff_mean": mean("sparse_phase_eff"),
        "dense_ideal": total("dense_ideal"), "dense_busy": total("dense_busy"),
        "sparse_ideal": total("sparse_ideal"), "sparse_busy": total("sparse_busy"),
    }


def write(cfg, rows, summary, simulator, builds=()):
    import dataclasses
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"unit": "vitcod", "simulator": simulator, "stalls": False,
               "config": dataclasses.asdict(cfg), "summary": summary, "heads": rows,
               "builds": list(builds)}
    (RESULTS / "vitcod.json").write_text(json.dumps(payload, indent=2))
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = [
        "# ViTCoD on the authors' DeiT-Tiny mask (N = 197, d = 64, 95 % sparse)",
        "",
        f"Config: {cfg.lines} lines x {cfg.macs_per_line} MACs "
        f"({cfg.lines * cfg.macs_per_line} MACs), theta_d = {cfg.theta_d}; {simulator}, no "
        f"stalls; random int8 Q/K/V per head (seeded). Generated by `benchmarks/vitcod.py` "
        f"(definitions in its docstring).",
        "",
        f"- heads: {summary['heads']}, RTL == golden bit-exact on all: "
        f"{summary['all_bit_exact']}",
        f"- compute cycles (SDDMM + softmax/SpMM): {summary['compute_cycles']:,} "
        f"(SDDMM {summary['sddmm_cycles']:,}, SpMM {summary['spmm_cycles']:,}); "
        f"with buffer loading and the normaliser tail: {summary['cycles_total']:,}",
        f"- dense-attention baseline on the same MACs: {summary['dense_baseline_cycles']:,} "
        f"cycles -> speed-up {summary['speedup_vs_dense']:.2f}x",
        f"- authors' analytical model at the same lines x MACs: "
        f"{summary['model_cycles']:,} compute cycles",
        f"- MAC utilisation (kept scores only): {summary['mac_utilisation']:.3f}",
        f"- engine issue efficiency (ideal / issuing cycles): dense mean "
        f"{fmt(summary['dense_issue_eff_mean'])} (min {fmt(summary['dense_issue_eff_min'])}), "
        f"sparse mean {fmt(summary['sparse_issue_eff_mean'])} "
        f"(min {fmt(summary['sparse_issue_eff_min'])})",
        f"- engine phase efficiency (ideal / compute cycles): dense mean "
        f"{fmt(summary['dense_phase_eff_mean'])}, sparse mean "
        f"{fmt(summary['sparse_phase_eff_mean'])}",
        "",
        "| layer | head | G | nnz | split d/s | SDDMM | SpMM | compute | total | model | "
        "baseline | speed-up | MAC util | dense eff | sparse eff | exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['head']} | {r['G']} | {r['nnz_sparse']} | "
            f"{r['lines_d']}/{r['lines_s']} | {r['sddmm_cycles']} | {r['spmm_cycles']} | "
            f"{r['compute_cycles']} | {r['cycles_total']} | {r['model_cycles']} | "
            f"{r['dense_baseline_cycles']} | {r['speedup_vs_dense']:.2f} | "
            f"{r['mac_utilisation']:.3f} | {fmt(r['dense_issue_eff'])} | "
            f"{fmt(r['sparse_issue_eff'])} | {'yes' if r['bit_exact'] else 'NO'} |")
    lines += common.builds_markdown(list(builds))
    (RESULTS / "vitcod.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = common.parser(__doc__.splitlines()[0])
    ap.set_defaults(boards=["ulx3s"])
    ap.add_argument("--heads", help="comma-separated layer:head list (default: all 36)")
    ap.add_argument("--builds-only", action="store_true", help=common.BUILDS_ONLY_HELP)
    args = ap.parse_args(argv)
    if args.builds_only:
        from vitaccel import units
        previous = json.loads((RESULTS / "vitcod.json").read_text())
        builds = common.refreshed_builds("vitcod", previous.get("builds", []), args.boards,
                                         saved=args.saved_builds)
        cfg = units.get("vitcod").Config(**previous["config"])
        write(cfg, previous["heads"], previous["summary"], previous["simulator"], builds)
        return 0
    from vitaccel.golden.vitcod import REAL_MASK_PATH
    if not REAL_MASK_PATH.exists():
        print(f"real mask not found at {REAL_MASK_PATH}", file=sys.stderr)
        return 2
    heads = None
    if args.heads:
        heads = [tuple(int(x) for x in item.split(":")) for item in args.heads.split(",")]
    cfg, rows = run(heads, args.sim)
    summary = summarise(cfg, rows)
    builds = [] if args.no_build else common.board_builds("vitcod", args.boards,
                                                          saved=args.saved_builds)
    write(cfg, rows, summary, args.sim, builds)
    print(json.dumps(summary, indent=2))
    return 0 if summary["all_bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
