"""Run a :class:`~vitaccel.sim.job.Job` on a component in Amaranth's built-in Python simulator.

Every input stream gets a driver with seeded random valid gaps, every output stream a sink with
seeded random ready back-pressure and a protocol checker (valid must not drop, and the payload must
not change, while a beat waits for ready). Small and fast for unit tests; use Verilator for long runs.
"""
from __future__ import annotations

import random
from pathlib import Path

from amaranth.hdl import Value
from amaranth.sim import Simulator

from .job import Job, Result, SimulationError

__all__ = ["run"]


def _rng(job: Job, salt: str):
    if job.stalls.seed is None:
        return None
    return random.Random(f"{job.stalls.seed}:{salt}")


def run(component, job: Job, waves: str | Path | None = None) -> Result:
    """Simulate ``component`` on ``job``; return the collected beats, status values and cycles.

    ``cycles`` counts clock edges from the start of the run to the last output handshake.
    Raises :class:`SimulationError` on a timeout or a stream protocol violation; with ``waves`` a
    VCD is written either way.
    """
    job.check_ports(component)

    collected = {name: [] for name in job.expect}
    status: dict[str, int] = {}
    state = {"pending": len(job.expect), "last": 0, "error": None}

    sim = Simulator(component)
    sim.add_clock(1e-8)

    def make_driver(name, beats):
        port = getattr(component, name)
        rng = _rng(job, "in:" + name)

        async def driver(ctx):
            for beat in beats:
                while rng is not None and rng.random() < job.stalls.valid_gap:
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                ctx.set(port.valid, 1)
                ctx.set(Value.cast(port.payload), beat)
                await ctx.tick().until(port.ready)
            ctx.set(port.valid, 0)
        return driver

    def make_sink(name, count):
        port = getattr(component, name)
        payload = Value.cast(port.payload)
        rng = _rng(job, "out:" + name)

        async def sink(ctx):
            for sname, value in job.statics.items():
                ctx.set(Value.cast(getattr(component, sname)), value)
            cycle = 0
            waiting = None          # payload of a beat that was valid but not taken
            while len(collected[name]) < count:
                ready = not (rng is not None and rng.random() < job.stalls.ready_gap)
                ctx.set(port.ready, ready)
                _, _, valid, data = await ctx.tick().sample(port.valid, payload)
                cycle += 1
                if waiting is not None and (not valid or data != waiting):
                    raise SimulationError(
                        f"stream protocol violation on {name!r} at cycle {cycle}: "
                        + ("valid dropped" if not valid else "payload changed")
                        + " while waiting for ready")
                if valid and ready:
                    collected[name].append(int(data))
                    state["last"] = max(state["last"], cycle)
                    waiting = None
                elif valid:
                    waiting = int(data)
                else:
                    waiting = None
                if cycle > job.max_cycles:
                    raise SimulationError(
                        f"timeout: {name!r} produced {len(collected[name])} of {count} beats in "
                        f"{job.max_cycles} cycles")
            ctx.set(port.ready, 0)
            state["pending"] -= 1
            if state["pending"] == 0:
                for sname in job.status:
                    status[sname] = int(ctx.get(Value.cast(getattr(component, sname))))
        return sink

    for name, beats in job.inputs.items():
        sim.add_testbench(make_driver(name, beats), background=True)
    for name, count in job.expect.items():
        sim.add_testbench(make_sink(name, count))

    if waves is not None:
        Path(waves).parent.mkdir(parents=True, exist_ok=True)
        with sim.write_vcd(str(waves)):
            sim.run()
    else:
        sim.run()
    return Result(outputs=collected, status=status, cycles=state["last"])
