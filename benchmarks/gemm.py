"""GEMM engine benchmark: cycles and MAC utilisation at several sizes, Fmax/resources per board.

MAC utilisation = useful MACs / (array MACs x cycles). Two figures per size:
  * compute: cycles from the first compute cycle to the last result beat (the engine's ``cycles``
    counter) -- the steady-state figure;
  * end-to-end: cycles from the first input beat to the last result, including loading A and B one
    byte per cycle. For one problem nothing hides the load; for a stream of problems the engine
    loads the next one into its second buffer set while computing (``stream`` rows).
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

STREAMS = [(64, 64, 64), (64, 64, 32), (32, 32, 32)]
STREAM_LEN = 5


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
    stream_rows = []
    for m, n, k in STREAMS:
        totals = {}
        for count in (1, STREAM_LEN):
            common.progress(f"gemm stream of {count} x {m}x{n}x{k} on {args.sim}")
            problems = [tuple(u.random_inputs(cfg, seed=i, m=m, n=n, k=k).values())
                        for i in range(count)]
            outs, stats = u.simulate_batch(cfg, problems, simulator=args.sim, stalls=False)
            if not all((c == u.golden(cfg, a=a, b=b)["c"]).all()
                       for (a, b), c in zip(problems, outs)):
                raise SystemExit(f"gemm stream {m}x{n}x{k}: RTL differs from golden")
            totals[count] = stats
        # steady state: the extra cycles each further problem costs once the pipe is full
        interval = (totals[STREAM_LEN]["cycles"] - totals[1]["cycles"]) / (STREAM_LEN - 1)
        stream_rows.append({
            "problem": f"{m}x{n}x{k}", "stream_len": STREAM_LEN,
            "total_cycles": totals[STREAM_LEN]["cycles"],
            "cycles_per_problem_steady": interval,
            "ideal_cycles": m * n * k // (cfg.rows * cfg.cols),
            "load_cycles": max(m * k, k * n),
            "util_steady_state": round(m * n * k / (cfg.rows * cfg.cols * interval), 4),
            "util_compute": round(totals[STREAM_LEN]["mac_utilisation"], 4),
            "bit_exact": True,
        })
    builds = [] if args.no_build else common.board_builds("gemm", args.boards,
                                                                saved=args.saved_builds)
    md = [f"GEMM engine, {cfg.rows}x{cfg.cols} MACs (ULX3S default), simulator {args.sim}, "
          "no stalls.\n",
          common.markdown_table(rows, ["M", "N", "K", "compute_cycles", "ideal_cycles",
                                       "util_compute", "total_cycles", "util_end_to_end",
                                       "bit_exact"])]
    md += ["\nProblems streamed back to back (loading problem i+1 overlaps computing problem i); "
           "steady state = cycles each further problem adds, MAC utilisation over those cycles. "
           "Loading is one byte per operand per cycle, so small K x (M or N) are load-bound:\n",
           common.markdown_table(stream_rows, ["problem", "stream_len", "total_cycles",
                                               "cycles_per_problem_steady", "ideal_cycles",
                                               "load_cycles", "util_steady_state",
                                               "util_compute", "bit_exact"])]
    md += common.builds_markdown(builds)
    common.write("gemm", {"config": str(cfg), "simulator": args.sim, "sizes": rows, "streams": stream_rows,
                          "builds": builds}, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
