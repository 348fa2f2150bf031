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

#: Fmax targets from the issues (benchmark figures, not test gates).
FMAX_TARGET_MHZ = {"ulx3s": 100.0, "icebreaker": 30.0}


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


def board_builds(unit_name: str, boards, targets=FMAX_TARGET_MHZ, saved=False) -> list[dict]:
    """Build ``unit_name`` with each board's default config, asking nextpnr for the target.
    A board the unit does not fit (``board_config`` raises) is listed with the reason."""
    from vitaccel import units
    from vitaccel.cli import run_build
    unit = units.get(unit_name)
    rows = []
    for board in boards:
        try:
            cfg = unit.board_config(board)
        except ValueError as exc:
            progress(f"{unit_name} does not fit {board}: {exc}")
            rows.append({"board": board, "config": f"does not fit: {exc}"})
            continue
        saved_path = Path("build/results") / f"{unit_name}-build-{board}.json"
        if saved and saved_path.exists():
            progress(f"reusing {saved_path}")
            report = json.loads(saved_path.read_text())
            if report.get("config") != str(cfg) and report.get("config") != cfg.__dict__:
                progress(f"  note: saved build config {report.get('config')} differs from {cfg}")
        else:
            progress(f"building {unit_name} for {board} (target {targets.get(board)} MHz)")
            report = run_build(unit_name, cfg, board, targets.get(board))
        rows.append({
            "board": board, "config": str(cfg), "luts": report.get("luts"),
            "dsps": report.get("dsps"), "brams": report.get("brams"),
            "fmax_mhz": round(report["fmax_mhz"], 2), "target_mhz": targets.get(board),
            "meets_target": report["fmax_mhz"] >= targets.get(board, 0),
        })
    return rows


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
