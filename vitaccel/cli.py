"""`vitaccel`: generate Verilog, simulate against the golden model, lint, build bitstreams, report.

A thin layer over :mod:`vitaccel.units`; every subcommand takes ``--set key=value`` to change the
unit's Config (validated; a bad value is one clear error line). Results of ``sim`` and ``build``
are kept as JSON under ``build/results/`` and gathered by ``report``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from vitaccel import units

RESULTS = Path("build/results")
BOARDS = ("ulx3s", "icebreaker")
SIMULATORS = ("verilator", "icarus", "amaranth")


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def _progress(message: str):
    print(f"[vitaccel] {message}", file=sys.stderr, flush=True)


def _config(unit, args, board=None, demo=False):
    """The starting Config (a board's default, the small demo config, or the unit's defaults =
    the paper's shape), then the --set overrides."""
    from vitaccel.units._common import replace
    if board:
        cfg = unit.board_config(board)
    elif demo and hasattr(unit, "demo_config"):
        cfg = unit.demo_config()
    else:
        cfg = unit.Config()
    changes = {}
    for item in args.set or []:
        if "=" not in item:
            raise CLIError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        changes[key.strip()] = value.strip()
    return replace(cfg, **changes) if changes else cfg


def _save(kind: str, unit: str, payload: dict, board: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{unit}-{kind}" + (f"-{board}" if board else "") + ".json"
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))
    return path


def _jsonable(obj):
    import dataclasses

    import numpy as np
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


# --- subcommands ------------------------------------------------------------------------------

def cmd_list(args):
    for name in units.names():
        doc = (units.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:10s} {doc}")


def cmd_verilog(args):
    from amaranth.back import verilog
    unit = units.get(args.unit)
    cfg = _config(unit, args, args.board)
    text = verilog.convert(unit.component(cfg), name=args.name, emit_src=False)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out} ({len(text.splitlines())} lines) for {args.unit} {cfg}")


def cmd_lint(args):
    from amaranth.back import verilog

    from vitaccel.sim import tools
    unit = units.get(args.unit)
    cfg = _config(unit, args, args.board)
    path = Path("build/lint") / f"{args.unit}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(verilog.convert(unit.component(cfg), name="top", emit_src=False))
    ok, text = tools.lint_verilog(path)
    if text.strip():
        print(text.rstrip())
    if not ok:
        raise CLIError(f"verilator --lint-only failed on {path}")
    print(f"lint ok: {path} (verilator --lint-only -Wno-fatal)")


def run_sim(unit_name: str, cfg, simulator: str, seed: int, stalls: bool, waves: bool,
            quiet: bool = False) -> dict:
    """Simulate a unit on its random demo inputs, compare with the golden model, save stats."""
    unit = units.get(unit_name)
    inputs = unit.random_inputs(cfg, seed)
    want = unit.golden(cfg, **inputs)
    if not quiet:
        _progress(f"simulating {unit_name} on {simulator} (seed {seed}, "
                  f"{'random stalls' if stalls else 'no stalls'})")
    start = time.time()
    got, stats = unit.simulate(cfg, **inputs, simulator=simulator,
                               stalls=seed if stalls else False, waves=waves)
    problems = unit.compare(want, got)
    record = {"unit": unit_name, "simulator": simulator, "seed": seed, "stalls": stalls,
              "config": cfg, "bit_exact": not problems, "mismatches": problems,
              "stats": stats, "seconds": round(time.time() - start, 2)}
    if not stalls:   # only stall-free runs are performance figures
        _save("sim", unit_name, record)
    return record


def cmd_sim(args):
    unit = units.get(args.unit)
    cfg = _config(unit, args, demo=not args.full)
    _progress(f"{args.unit} {cfg}")
    record = run_sim(args.unit, cfg, args.sim, args.seed, not args.no_stalls, args.waves)
    stats = ", ".join(f"{k}={_fmt(v)}" for k, v in record["stats"].items())
    if record["mismatches"]:
        for line in record["mismatches"]:
            print(f"MISMATCH {line}")
        raise CLIError(f"{args.unit}: RTL differs from the golden model "
                       f"(re-run with --waves for a waveform)")
    print(f"{args.unit}: RTL == golden, bit-exact on {args.sim} ({stats})")


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run_build(unit_name: str, cfg, board: str, freq: float | None, router: str | None = None,
              seed: int | None = None) -> dict:
    from vitaccel.boards import build as board_build
    unit = units.get(unit_name)
    from vitaccel.boards.platforms import board_top
    from vitaccel.boards.hostlink import unit_id_of
    top = board_top(unit.component(cfg), board, unit_id=unit_id_of(unit_name))
    # a seeded build has a directory of its own, so seeds of one netlist can run side by side
    build_dir = f"build/boards/{unit_name}" + ("" if seed is None else f"/seed{seed}")
    report = board_build.build(top, board, freq_mhz=freq, router=router, seed=seed,
                               build_dir=build_dir, progress=_progress)
    report["unit"] = unit_name
    report["config"] = cfg
    _save("build", unit_name, report, board)
    return report


def cmd_build(args):
    from vitaccel.boards import build as board_build
    unit = units.get(args.unit)
    cfg = _config(unit, args, args.board)
    freq = args.freq if args.freq is not None else unit.FMAX_TARGET_MHZ.get(args.board)
    report = run_build(args.unit, cfg, args.board, freq, args.router, args.seed)
    print(board_build.format_report(report))


def collect_results(results_dir: Path = RESULTS) -> dict:
    rows = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        rows[path.stem] = data
    return rows


def format_table(results: dict) -> str:
    lines = ["| unit | what | cycles | utilisation | LUT | DSP | BRAM | Fmax MHz | target MHz |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        if "stats" in r:
            s = r["stats"]
            util = s.get("mac_utilisation")
            lines.append(f"| {r['unit']} | sim ({r['simulator']}) | {s.get('cycles', '')} | "
                         f"{'' if util is None else f'{util:.1%}'} | | | | | |")
        elif "fmax_mhz" in r:
            lines.append(f"| {r['unit']} | {r['board']} | | | {r.get('luts', '')} | "
                         f"{r.get('dsps', '')} | {r.get('brams', '')} | "
                         f"{r['fmax_mhz']:.1f} | {r.get('target_mhz', '')} |")
    return "\n".join(lines)


def cmd_report(args):
    results = collect_results(Path(args.results))
    if not results:
        raise CLIError(f"no results under {args.results}: run `vitaccel sim` or `vitaccel build` "
                       f"first (or `make demo`)")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
        print(f"wrote {args.json}")


DEMO_BUILD_UNITS = ("gemm",)   # bitstreams `make demo` builds by default (minutes each)


def cmd_demo(args):
    """The main job on built-in defaults: for every unit, Verilog and a simulation against the
    golden model (with and without random stalls); a ULX3S bitstream for the GEMM engine (every
    unit with --build-all); then the report."""
    names = args.units or units.names()
    t0 = time.time()
    for name in names:
        unit = units.get(name)
        cfg = unit.demo_config() if hasattr(unit, "demo_config") else unit.Config()
        _progress(f"== {name}: {cfg}")
        path = Path(f"build/verilog/{name}.v")
        path.parent.mkdir(parents=True, exist_ok=True)
        from amaranth.back import verilog
        path.write_text(verilog.convert(unit.component(cfg), name="top", emit_src=False))
        print(f"wrote {path} for {name} {cfg}")
        for stalls in (True, False):
            record = run_sim(name, cfg, args.sim, seed=1, stalls=stalls, waves=False)
            if record["mismatches"]:
                raise CLIError(f"{name}: RTL differs from golden: {record['mismatches'][0]}")
        print(f"{name}: RTL == golden, bit-exact on {args.sim} with and without random stalls; "
              f"{record['stats']['cycles']} cycles without stalls")
    build_units = [] if args.no_build else (names if args.build_all else
                                             [n for n in names if n in DEMO_BUILD_UNITS])
    for name in build_units:
        from vitaccel.boards import build as board_build
        unit = units.get(name)
        report = run_build(name, unit.board_config("ulx3s"), "ulx3s",
                           unit.FMAX_TARGET_MHZ.get("ulx3s"))
        print(board_build.format_report(report))
    if not args.no_workload:
        workload_demo(args.sim)
    print()
    cmd_report(argparse.Namespace(results=str(RESULTS), json="build/results/report.json"))
    print(f"\ndemo finished in {time.time() - t0:.0f} s")


#: the unit whose RTL `make demo` runs on the ViT's own tensors (one block of one image)
DEMO_RTL_UNIT = ("vitality", "vitality", 0)      # (variant, unit, block)


def workload_demo(simulator: str = "verilator", count: int = 16):
    """A short tour of the real workload: a few Fashion-MNIST test images through the integer
    ViT of every variant (calibrated on real training images), then one unit's RTL on the exact
    tensors the model hands it."""
    import numpy as np

    from vitaccel.golden import fmnist
    from vitaccel.model import evaluate as E
    from vitaccel.model import quant as Q
    images, labels, _ = fmnist.load_test(subset=True)
    images, labels = images[:count], labels[:count]
    _progress(f"== workload: {count} Fashion-MNIST test images through the integer ViT")
    rows = E.evaluate(E.DEFAULT_VARIANTS, images, labels, progress=None)
    print(f"first {count} test images (the full table: vitaccel eval, benchmarks/results/workload.md)")
    print(E.format_table(rows))
    variant, unit_name, block = DEMO_RTL_UNIT
    model = Q.build(variant)
    cap = {"images": {0}, "calls": []}
    model.forward(images[:1], capture=cap)
    call = next(c for c in cap["calls"] if c["unit"] == unit_name and c["block"] == block)
    unit = units.get(unit_name)
    _progress(f"simulating {unit_name} on {simulator} with block {block}'s real tensors of test "
              f"image 0 (random stalls)")
    got, stats = unit.simulate(call["config"], **call["inputs"], simulator=simulator, stalls=1)
    problems = unit.compare(call["outputs"], got)
    if problems:
        raise CLIError(f"{unit_name} RTL differs from golden on the model's tensors: {problems[0]}")
    print(f"{unit_name} RTL == golden on block {block} of test image 0 "
          f"({', '.join(f'{k}={np.shape(v)}' for k, v in call['inputs'].items())}), "
          f"bit-exact under random stalls, {stats['cycles']} cycles")


# --- the ViT workload ----------------------------------------------------------------------------

def _test_images(args):
    from vitaccel.golden import fmnist
    images, labels, what = fmnist.load_test(args.data, subset=args.subset)
    if args.limit:
        if args.limit < 1:
            raise CLIError(f"--limit must be >= 1, got {args.limit}")
        images, labels = images[:args.limit], labels[:args.limit]
        what += f", first {len(images)}"
    return images, labels, what


def cmd_calibrate(args):
    """Choose every scale, shift and threshold of the units from real activations."""
    from vitaccel.model import quant as Q
    images = Q.load_calibration_images(args.images, args.data)
    _progress(f"calibrating {args.variant} on {len(images)} training images")
    model = Q.build(args.variant, images)
    report = model.calibration_report()
    out = Path(args.json or f"build/results/calibration-{args.variant.replace('+', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=_jsonable))
    print(f"residual stream: int16 at scale {report['residual_scale']:.4g}; LayerNorm outputs "
          f"int8 with {report['layernorm_frac_bits']} fraction bits")
    print("| block | LN1 in | q | k | v | attn out | LN2 in | GELU out | unit configs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, b in enumerate(report["blocks"]):
        sc = b["scales"]
        units_txt = "; ".join(
            f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in cfg.items() if k in _CALIB_FIELDS)
            for name, cfg in b["units"].items())
        print(f"| {i} | " + " | ".join(f"{sc[k]:.4g}" for k in
              ("ln1_in", "q", "k", "v", "attn_out", "ln2_in", "gelu_out")) + f" | {units_txt} |")
    for s in report["selectors"]:
        c = s["heatvit"]
        print(f"heatvit selector before block {s['block']}: " + ", ".join(
            f"{k}={c[k]:.4g}" for k in ("x_scale", "u_scale", "a2_scale", "a3_scale", "hb_scale")))
    print(f"wrote {out}")


_CALIB_FIELDS = ("q_scale", "k_scale", "v_scale", "out_scale", "g_shift", "k", "mantissa_bits",
                 "onehot_threshold", "x_scale", "wq_scale")


def cmd_eval(args):
    """Top-1, MACs, cycles and images/s of every variant on Fashion-MNIST (integer-only)."""
    from vitaccel.model import evaluate as E
    from vitaccel.model import quant as Q
    variants = args.variants or list(E.DEFAULT_VARIANTS)
    images, labels, what = _test_images(args)
    calib = Q.load_calibration_images(args.calibration, args.data)
    _progress(f"evaluating {', '.join(variants)} on {what}")
    rows = E.evaluate(variants, images, labels, calib, progress=_progress, jobs=args.jobs)
    print(f"{what}; calibration: first {len(calib)} training images")
    print(E.format_table(rows))
    if args.json:
        E.write_results(rows, json_path=args.json)
        print(f"wrote {args.json}")


def cmd_infer(args):
    """Classify images (28 x 28 greyscale PNG or .npy uint8) and print per-unit cycles."""
    import numpy as np

    from vitaccel.golden.fmnist import CLASSES
    from vitaccel.model import cost as C
    from vitaccel.model import png
    from vitaccel.model import quant as Q
    imgs = []
    for name in args.images:
        path = Path(name)
        if not path.is_file():
            raise CLIError(f"{path}: no such file")
        if path.suffix.lower() == ".npy":
            try:
                a = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise CLIError(f"{path}: not a NumPy .npy array ({e})") from None
        elif path.suffix.lower() == ".png":
            a = png.read_png(path)
        else:
            raise CLIError(f"{path}: expected a .png or .npy image")
        if a.dtype != np.uint8:
            raise CLIError(f"{path}: expected uint8 pixels, got dtype {a.dtype}")
        if a.shape != (28, 28):
            raise CLIError(f"{path}: expected a 28 x 28 greyscale image, got shape {a.shape}")
        imgs.append(a)
    model = Q.build(args.variant)
    logits, stats = model.forward(np.stack(imgs))
    for b, name in enumerate(args.images):
        one = {k: (v[b:b + 1] if k == "tokens" else v) for k, v in stats.items()}
        cyc = C.variant_cost(args.variant, model.cfg, model, one)
        cls = int(logits[b].argmax())
        per_unit = ", ".join(f"{k}={v:,}" for k, v in cyc.get("cycles_by_unit", {}).items())
        print(f"{name}: {CLASSES[cls]} (class {cls}); {args.variant}: "
              f"{cyc.get('cycles_per_image', 0):,} cycles ({per_unit})")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="vitaccel",
        description="Vision-transformer accelerator units in Amaranth HDL: generate Verilog, "
                    "simulate against NumPy golden models (cocotb + Verilator), lint, build "
                    "bitstreams with YoWASP, report cycles/resources/Fmax.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def unit_parser(name, help_text, **kw):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("unit", choices=units.names(), help="unit name")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a Config field (repeatable), e.g. --set rows=4")
        return p

    p = sub.add_parser("list", help="list the units")
    p.set_defaults(func=cmd_list)

    p = unit_parser("verilog", "write the unit's Verilog")
    p.add_argument("-o", "--output", required=True, help="output .v file")
    p.add_argument("--name", default="top", help="top module name (default: top)")
    p.add_argument("--board", choices=BOARDS, help="start from that board's default config")
    p.set_defaults(func=cmd_verilog)

    p = unit_parser("sim", "simulate the RTL on random data and compare with the golden model")
    p.add_argument("--sim", choices=SIMULATORS, default="verilator",
                   help="simulator (default: verilator, via cocotb)")
    p.add_argument("--waves", action="store_true", help="dump a waveform (FST/VCD)")
    p.add_argument("--seed", type=int, default=1, help="seed for data and stalls (default 1)")
    p.add_argument("--no-stalls", action="store_true",
                   help="no random valid gaps / ready back-pressure (cycle counts for benchmarks)")
    p.add_argument("--full", action="store_true",
                   help="start from the unit's full default Config (the paper's shape; minutes "
                        "on Verilator for the attention units) instead of its small demo config")
    p.set_defaults(func=cmd_sim)

    p = unit_parser("lint", "run verilator --lint-only -Wno-fatal on the generated Verilog")
    p.add_argument("--board", choices=BOARDS, help="start from that board's default config")
    p.set_defaults(func=cmd_lint)

    p = unit_parser("build", "build a bitstream with YoWASP and print utilisation and Fmax")
    p.add_argument("--board", choices=BOARDS, required=True, help="target board")
    p.add_argument("--freq", type=float, metavar="MHZ",
                   help="timing target for nextpnr (default: the unit's target for the board, "
                        "e.g. 75 MHz for heatvit on the ULX3S); the achieved Fmax is reported "
                        "either way, and the bitstream runs from the board's oscillator")
    p.add_argument("--router", choices=("router1", "router2"),
                   help="nextpnr router (default router1, the better Fmax; router2 finishes "
                        "much sooner on large congested designs)")
    p.add_argument("--seed", type=int, metavar="N",
                   help="nextpnr placer seed (default: nextpnr's own); near the target, Fmax "
                        "moves by a few percent between seeds, so a few seeds are worth a try")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("report", help="table + JSON of every sim and build result so far")
    p.add_argument("--results", default=str(RESULTS), help="results folder (default build/results)")
    p.add_argument("--json", help="also write the combined results to this JSON file")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the main job on built-in defaults: Verilog, simulation vs "
                                    "golden, ULX3S bitstream, report",
                       description=cmd_demo.__doc__)
    p.add_argument("units", nargs="*", help="units (default: all)")
    p.add_argument("--sim", choices=SIMULATORS, default="verilator")
    p.add_argument("--no-build", action="store_true", help="skip the bitstream build")
    p.add_argument("--build-all", action="store_true",
                   help="build a ULX3S bitstream for every unit (default: gemm only)")
    p.add_argument("--no-workload", action="store_true",
                   help="skip the Fashion-MNIST ViT tour (a few images through every variant, "
                        "one unit's RTL on the model's own tensors)")
    p.set_defaults(func=cmd_demo)

    def data_args(p, limit=True):
        p.add_argument("--data", metavar="DIR", help="folder with the four Fashion-MNIST IDX "
                       "files (default: /usr/share/datasets/fashion-mnist when present)")
        if limit:
            p.add_argument("--subset", action="store_true",
                           help="score the shipped 1,000-image test subset even when the full "
                                "set is present")
            p.add_argument("--limit", type=int, metavar="N", help="only the first N test images")

    p = sub.add_parser("calibrate", help="choose every unit scale/shift/threshold of a ViT "
                       "variant from real activations", description=cmd_calibrate.__doc__)
    p.add_argument("variant", help="int8, heatvit, vitcod, vitality, fact or a+b")
    p.add_argument("--images", type=int, default=512,
                   help="calibration batch: the first N training images (default 512)")
    p.add_argument("--json", help="output (default build/results/calibration-<variant>.json)")
    data_args(p, limit=False)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="top-1 / MACs / cycles / images/s of the Fashion-MNIST ViT "
                       "through the units", description=cmd_eval.__doc__ + " Scores the full "
                       "10,000-image test set when it is found, else the shipped 1,000 images.")
    p.add_argument("--variants", nargs="+", metavar="V",
                   help="float int8 heatvit vitcod vitality fact heatvit+vitcod (default: all)")
    p.add_argument("--calibration", type=int, default=512, metavar="N",
                   help="calibration images (first N training images, default 512)")
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="worker processes for the integer model (default: one per CPU)")
    data_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", help="classify 28x28 PNG/NPY images with the integer ViT",
                       description=cmd_infer.__doc__)
    p.add_argument("images", nargs="+", help="28 x 28 uint8 greyscale .png or .npy files")
    p.add_argument("--variant", default="heatvit+vitcod",
                   help="which integer model (default heatvit+vitcod)")
    p.set_defaults(func=cmd_infer)

    args = parser.parse_args(argv)
    if os.environ.get("VITACCEL_DEBUG"):      # full tracebacks for developers
        args.func(args)
        return 0
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, OSError) as exc:
        print(f"vitaccel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:   # simulation / build failures: still one line, with the type
        print(f"vitaccel {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
