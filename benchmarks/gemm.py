"""GEMM engine benchmark: cycles and MAC utilisation at several sizes, Fmax/resources per board.

MAC utilisation = useful MACs / (array MACs x cycles). Two figures per size:
  * compute: cycles from the first compute cycle to the last result beat (the engine's ``cycles``
    counter) -- the steady-state figure;
  * end-to-end: cycles from the first input beat to the last result, including loading A and B one
    byte per cycle (the engine does not overlap loading with computing).
Cycle counts come from simulation without stalls.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from vitaccel import units  # noqa: E402

SIZES = [(8, 8, 8), (16, 16, 16), (32, 32, 32), (64, 64, 64), (64, 64, 17), (33, 47, 64),
         (64, 8, 64), (1, 64, 64)]


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    u = units.get("gemm")
    cfg = u.Config()
    rows = []
    for m, n, k in SIZES:
        common.progress(f"gemm {m}x{n}x{k} on {args.sim}")
        inputs = u.random_inputs(cfg, seed=m + n + k, m=m, n=n, k=k)
        got, stats = u.simulate(cfg, **inputs, simulator=args.sim, stalls=False)
        exact = not u.compare(u.golden(cfg, **inputs), got)
        macs = m * n * k
        rows.append({
            "M": m, "N": n, "K": k, "macs": macs,
            "compute_cycles": stats["compute_cycles"], "total_cycles": stats["cycles"],
            "ideal_cycles": -(-macs // (cfg.rows * cfg.cols)),
            "util_compute": round(stats["mac_utilisation"], 4),
            "util_end_to_end": round(macs / (cfg.rows * cfg.cols * stats["cycles"]), 4),
            "bit_exact": exact,
        })
    builds = [] if args.no_build else common.board_builds("gemm", args.boards)
    md = [f"GEMM engine, {cfg.rows}x{cfg.cols} MACs (ULX3S default), simulator {args.sim}, "
          "no stalls.\n",
          common.markdown_table(rows, ["M", "N", "K", "compute_cycles", "ideal_cycles",
                                       "util_compute", "total_cycles", "util_end_to_end",
                                       "bit_exact"])]
    if builds:
        md += ["\nBoard builds (each board's default config; nextpnr asked for the target):\n",
               common.markdown_table(builds, ["board", "config", "luts", "dsps", "brams",
                                              "fmax_mhz", "target_mhz", "meets_target"])]
    common.write("gemm", {"config": str(cfg), "simulator": args.sim, "sizes": rows,
                          "builds": builds}, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
