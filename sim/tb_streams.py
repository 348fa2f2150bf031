"""Generic cocotb testbench: run a :class:`~vitaccel.sim.job.Job` on Amaranth-generated Verilog.

The cocotb twin of :mod:`vitaccel.sim.amaranth_sim`, started by :func:`vitaccel.sim.runner.run`
inside the simulator process. It reads the job from the JSON file named by ``VITACCEL_JOB`` and
writes a :class:`~vitaccel.sim.job.Result` (or ``{"error": ...}``) to ``VITACCEL_RESULT``.

Ports follow Amaranth's Verilog naming: ``clk``, ``rst`` (active high, synchronous), streams as
``<name>__valid`` / ``<name>__ready`` / ``<name>__payload``.

Semantics match the Amaranth harness exactly, so cycle counts agree: drivers idle before each beat
with probability ``valid_gap`` (one draw per cycle from ``Random(f"{seed}:in:{name}")``) and then
hold valid + payload until the handshake; sinks draw ``ready`` every cycle from
``Random(f"{seed}:out:{name}")``; ``cycles`` counts rising edges after reset release (the first
edge with ``rst`` low is cycle 1) up to the last output handshake.

One coroutine does everything, two triggers per clock cycle:
``RisingEdge`` (process the handshakes of this edge, then drive the inputs for the next edge) and
``ReadOnly`` (sample the settled values the next edge will see).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, Timer

RESET_CYCLES = 3
CLOCK_PERIOD_NS = 10

try:        # fast path: cocotb's own write scheduling without the per-call checks of `.value =`
    from cocotb.handle import _GPISetAction, _schedule_write
    _DEPOSIT = _GPISetAction.DEPOSIT
except ImportError:         # pragma: no cover - other cocotb versions
    _schedule_write = None


class _Stop(Exception):
    """Timeout or protocol violation: message is reported back to the runner."""


def _writer(handle):
    """A fast ``f(int)`` that deposits an unsigned int into ``handle``."""
    width = len(handle)
    if _schedule_write is None:
        def write(value):
            handle.value = value
        return write
    raw = handle._handle
    if width < 32:
        set_int = raw.set_signal_val_int

        def write(value):
            _schedule_write(handle, set_int, _DEPOSIT, value)
        return write
    set_bin = raw.set_signal_val_binstr
    fmt = f"0{width}b"

    def write(value):
        _schedule_write(handle, set_bin, _DEPOSIT, format(value, fmt))
    return write


def _reader(handle, what):
    """A fast ``f() -> int`` reading ``handle`` as unsigned; X/Z raises :class:`_Stop`."""
    get = handle._handle.get_signal_val_binstr

    def read():
        s = get()
        try:
            return int(s, 2)
        except ValueError:
            raise _Stop(f"{what} is not a 0/1 value: {s!r}") from None
    return read


def _has(dut, name):
    try:
        getattr(dut, name)
    except AttributeError:
        return False
    return True


def _sig(dut, name):
    try:
        return getattr(dut, name)
    except AttributeError:
        raise _Stop(f"the design has no port {name!r}") from None


class _Driver:
    __slots__ = ("name", "beats", "n", "idx", "on", "rng", "gap", "w_valid", "w_payload",
                 "r_ready", "valid_out", "took")

    def __init__(self, dut, name, beats, rng, gap):
        self.name = name
        self.beats = beats
        self.n = len(beats)
        self.idx = 0
        self.on = False             # valid is high for beats[idx]
        self.rng = rng
        self.gap = gap
        self.w_valid = _writer(_sig(dut, name + "__valid"))
        self.w_payload = _writer(_sig(dut, name + "__payload"))
        self.r_ready = _sig(dut, name + "__ready")._handle.get_signal_val_binstr
        self.valid_out = 0
        self.took = False


class _Sink:
    __slots__ = ("name", "count", "got", "rng", "gap", "w_ready", "r_valid", "r_payload",
                 "ready", "waiting", "active", "valid", "data")

    def __init__(self, dut, name, count, rng, gap):
        self.name = name
        self.count = count
        self.got = []
        self.rng = rng
        self.gap = gap
        self.w_ready = _writer(_sig(dut, name + "__ready"))
        self.r_valid = _sig(dut, name + "__valid")._handle.get_signal_val_binstr
        self.r_payload = _reader(_sig(dut, name + "__payload"), name + "__payload")
        self.ready = 0
        self.waiting = None
        self.active = count > 0
        self.valid = False
        self.data = 0


def _rng(seed, salt):
    if seed is None:
        return None
    return random.Random(f"{seed}:{salt}")


async def _run(dut, job):
    seed = job["stalls"]["seed"]
    valid_gap = job["stalls"]["valid_gap"]
    ready_gap = job["stalls"]["ready_gap"]
    max_cycles = job["max_cycles"]

    # a purely combinational design has no clk/rst: time then advances in clock periods
    clk = _sig(dut, "clk") if _has(dut, "clk") else None
    rst = _sig(dut, "rst") if _has(dut, "rst") else None
    drivers = [_Driver(dut, name, list(beats), _rng(seed, "in:" + name), valid_gap)
               for name, beats in job["inputs"].items()]
    sinks = [_Sink(dut, name, count, _rng(seed, "out:" + name), ready_gap)
             for name, count in job["expect"].items()]
    statics = [(_writer(_sig(dut, name)), int(value)) for name, value in job["statics"].items()]
    status_readers = [(name, _reader(_sig(dut, name), name)) for name in job["status"]]

    if clk is not None:
        Clock(clk, CLOCK_PERIOD_NS, unit="ns").start(start_high=False)
        rising = RisingEdge(clk)
    else:
        rising = Timer(CLOCK_PERIOD_NS, unit="ns")
    readonly = ReadOnly()

    # reset: statics held from the start, every valid and ready low
    if rst is not None:
        _writer(rst)(1)
    for write, value in statics:
        write(value)
    for d in drivers:
        d.w_valid(0)
    for s in sinks:
        s.w_ready(0)
    for _ in range(RESET_CYCLES):
        await rising
    if rst is not None:
        _writer(rst)(0)

    cycle = 0
    last = 0
    pending = sum(1 for s in sinks if s.active)
    active_drivers = [d for d in drivers if d.n]
    active_sinks = [s for s in sinks if s.active]

    while pending:
        # ---- drive for edge `cycle + 1` (we are just after edge `cycle`, or at reset release)
        for d in active_drivers:
            if not d.on:
                rng = d.rng
                if rng is not None and rng.random() < d.gap:
                    if d.valid_out:
                        d.w_valid(0)
                        d.valid_out = 0
                    continue
                d.on = True
                d.w_payload(d.beats[d.idx])
                if not d.valid_out:
                    d.w_valid(1)
                    d.valid_out = 1
        for s in active_sinks:
            rng = s.rng
            ready = 0 if (rng is not None and rng.random() < s.gap) else 1
            if ready != s.ready:
                s.w_ready(ready)
                s.ready = ready

        # ---- sample the settled values that edge `cycle + 1` will see
        await readonly
        for d in active_drivers:
            d.took = d.on and d.r_ready() == "1"
        for s in active_sinks:
            v = s.r_valid()
            if v == "1":
                s.valid = True
                s.data = s.r_payload()
            elif v == "0":
                s.valid = False
            else:
                raise _Stop(f"{s.name}__valid is not a 0/1 value at cycle {cycle + 1}: {v!r}")

        await rising
        cycle += 1

        # ---- handshakes at edge `cycle`
        finished = False
        for d in active_drivers:
            if d.took:
                d.idx += 1
                d.on = False
                if d.idx == d.n:
                    d.w_valid(0)
                    d.valid_out = 0
                    finished = True
        if finished:
            active_drivers = [d for d in active_drivers if d.idx < d.n]
        done = False
        for s in active_sinks:
            waiting = s.waiting
            if s.valid:
                data = s.data
                if waiting is not None and data != waiting:
                    raise _Stop(f"stream protocol violation on {s.name!r} at cycle {cycle}: "
                                f"payload changed (0x{waiting:x} -> 0x{data:x}) while waiting "
                                f"for ready")
                if s.ready:
                    s.got.append(data)
                    last = cycle
                    s.waiting = None
                    if len(s.got) == s.count:
                        s.active = False
                        s.w_ready(0)
                        s.ready = 0
                        pending -= 1
                        done = True
                else:
                    s.waiting = data
            else:
                if waiting is not None:
                    raise _Stop(f"stream protocol violation on {s.name!r} at cycle {cycle}: "
                                f"valid dropped while waiting for ready (payload 0x{waiting:x})")
        if done:
            active_sinks = [s for s in active_sinks if s.active]
        if cycle > max_cycles:
            missing = ", ".join(f"{s.name!r} produced {len(s.got)} of {s.count} beats"
                                for s in sinks if len(s.got) < s.count)
            raise _Stop(f"timeout: {missing or 'all outputs complete'} in {max_cycles} cycles")

    # ---- status, read once the last output arrived (state after the last handshake edge)
    await readonly
    status = {name: read() for name, read in status_readers}
    return {"outputs": {s.name: s.got for s in sinks}, "status": status, "cycles": last}


@cocotb.test()
async def run_job(dut):
    """Run the job named by ``VITACCEL_JOB`` and write the result to ``VITACCEL_RESULT``."""
    job = json.loads(Path(os.environ["VITACCEL_JOB"]).read_text())
    result_path = Path(os.environ["VITACCEL_RESULT"])
    try:
        result = await _run(dut, job)
    except _Stop as e:
        result_path.write_text(json.dumps({"error": str(e)}))
        raise AssertionError(str(e)) from None
    except Exception as e:
        result_path.write_text(json.dumps({"error": f"testbench error: {type(e).__name__}: {e}"}))
        raise
    result_path.write_text(json.dumps(result))
