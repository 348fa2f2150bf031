"""Shared pieces of the benchmark scripts: argument parsing, board builds, JSON + Markdown output.

Every benchmark writes ``benchmarks/results/<name>.json`` (for diffs and tools) and
``benchmarks/results/<name>.md`` (the table the README quotes).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sim", default="verilator", choices=("verilator", "icarus", "amaranth"),
                   help="simulator for cycle counts (default verilator)")
    p.add_argument("--no-build", action="store_true", help="skip the YoWASP board builds")
    p.add_argument("--boards", nargs="*", default=["ulx3s", "icebreaker"],
                   help="boards to build for (default: ulx3s icebreaker)")
    p.add_argument("--saved-builds", action="store_true",
                   help="reuse the reports of earlier `vitaccel build` runs "
                        "(build/results/<unit>-build-<board>.json) instead of rebuilding")
    return p


def progress(message: str):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def board_builds(unit_name: str, boards, saved=False) -> list[dict]:
    """One row per board: LUT/FF/DSP/BRAM and the Fmax nextpnr reached when asked for the board's
    target, from a build of the board's default config behind the host link. ``target_mhz`` and
    ``meets_target`` are against the unit's ``FMAX_TARGET_MHZ`` (the goal), whatever an older
    saved build asked nextpnr for.

    With ``saved`` the report of an earlier ``vitaccel build <unit> --board B`` run
    (``build/results/<unit>-build-<board>.json``; ECP5 builds of the large units take tens of
    minutes here, so they are run on their own) is used instead, if it was made with the board's
    default config (no build is started without one); ``built_utc`` (the report's time)
    says which RTL it saw. A board the unit does
    not fit (``board_config`` raises) or a build that fails is a row with the reason, not a crash.
    """
    import dataclasses

    from vitaccel import units
    from vitaccel.boards.build import BuildError
    from vitaccel.cli import RESULTS, _jsonable, run_build
    unit = units.get(unit_name)
    rows = []
    for board in boards:
        target = unit.FMAX_TARGET_MHZ.get(board)
        try:
            cfg = unit.board_config(board)
        except ValueError as exc:
            progress(f"{unit_name} does not fit {board}: {exc}")
            rows.append({"board": board, "fits": False, "note": f"does not fit: {exc}"})
            continue
        saved_path = RESULTS / f"{unit_name}-build-{board}.json"
        if saved and not saved_path.is_file():   # asked not to build: say so, do not start one
            progress(f"no saved build {saved_path}")
            rows.append({"board": board, "note": f"no saved `vitaccel build {unit_name} --board "
                                                 f"{board}` report ({saved_path})"})
            continue
        if saved:
            report = json.loads(saved_path.read_text())
            default = json.loads(json.dumps(dataclasses.asdict(cfg), default=_jsonable))
            if report.get("config") != default:
                progress(f"{saved_path.name}: not the {board} default config, ignored")
                rows.append({"board": board, "note": "saved build is not of the default config"})
                continue
            progress(f"reusing {saved_path}")
            built = datetime.fromtimestamp(saved_path.stat().st_mtime, timezone.utc)
        else:
            progress(f"building {unit_name} for {board} (target {target} MHz)")
            try:
                report = run_build(unit_name, cfg, board, target)
            except BuildError as exc:
                rows.append({"board": board, "note": f"build failed: {exc}"})
                continue
            built = datetime.now(timezone.utc)
        fmax = report.get("fmax_mhz")
        router = report.get("router") or _router_of(report)
        seed = report.get("seed")
        rows.append({
            "board": board, "config": str(cfg), "luts": report.get("luts"),
            "ffs": report.get("ffs"), "dsps": report.get("dsps"), "brams": report.get("brams"),
            "fmax_mhz": None if fmax is None else round(fmax, 2),
            "target_mhz": target if target is not None else report.get("target_mhz"),
            "meets_target": fmax is not None and target is not None and fmax >= target,
            "router": router, "seed": "default" if seed is None else seed,
            "build_seconds": report.get("seconds"),
            "built_utc": built.isoformat(timespec="minutes"),
        })
    return rows


BUILDS_ONLY_HELP = ("keep the other results of benchmarks/results/<unit>.json and only redo the "
                    "board-build rows of the boards given (a ULX3S build of a large unit takes "
                    "30-50 min, longer than its simulations: refresh the rows when it finishes)")


def refreshed_builds(unit_name: str, previous: list[dict], boards, saved=False) -> list[dict]:
    """``previous`` build rows with those of ``boards`` replaced by :func:`board_builds` rows
    (rows of other boards kept, in board order), for the benchmarks' ``--builds-only``."""
    fresh = {r["board"]: r for r in board_builds(unit_name, boards, saved=saved)}
    rows = [fresh.pop(r["board"], r) for r in previous]
    return rows + list(fresh.values())


def _router_of(report: dict) -> str | None:
    """The nextpnr router of a build whose report predates the ``router`` field: read from the
    build script beside its bitstream."""
    script = Path(report.get("bitstream") or "").parent / "build_top.sh"
    if not report.get("bitstream") or not script.is_file():
        return None
    return "router2" if "--router router2" in script.read_text() else "router1"


BUILD_COLUMNS = ["board", "luts", "ffs", "dsps", "brams", "fmax_mhz", "target_mhz", "meets_target",
                 "router", "seed", "built_utc"]


def builds_markdown(builds: list[dict]) -> list[str]:
    """The board-build table of :func:`board_builds` rows, each built config, and the boards that
    were not built with the reason."""
    built = [r for r in builds if "fmax_mhz" in r]
    md = []
    if built:
        md += ["\nBoard builds (each board's default config behind the UART host link; nextpnr "
               "asked for the target):\n", markdown_table(built, BUILD_COLUMNS), ""]
        md += [f"- {r['board']}: `{r['config']}`" for r in built]
    md += [f"\n{r['board']}: {r['note']}" for r in builds if "note" in r]
    return md


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if v < 10 else f"{v:.1f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write(name: str, data: dict, markdown: str):
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = dict(data)
    data["generated"] = {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "python": platform.python_version()}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str)
                                          + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    progress(f"wrote {RESULTS / (name + '.json')} and .md")
