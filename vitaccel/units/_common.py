"""Pieces every unit module shares: config validation, simulator dispatch, comparison."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from vitaccel.sim.job import Job, Result, StallProfile

SIMULATORS = ("amaranth", "verilator", "icarus")
BOARDS = ("ulx3s", "icebreaker")


def check_int_field(cfg, name: str, lo: int, hi: int | None = None):
    """Raise ``ValueError`` naming ``Config.name`` unless it is an int in [lo, hi]."""
    value = getattr(cfg, name)
    cls = type(cfg).__qualname__
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{cls}.{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{cls}.{name} must be in {rng}, got {value}")


def replace(cfg, **changes):
    """A validated copy of ``cfg`` with ``changes`` (CLI ``--set key=value``): unknown keys and
    values of the wrong type give a clear error."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    typed = {}
    for key, value in changes.items():
        if key not in fields:
            raise ValueError(f"{type(cfg).__qualname__} has no field {key!r}; "
                             f"fields: {', '.join(fields)}")
        current = getattr(cfg, key)
        if isinstance(value, str):
            try:
                if isinstance(current, bool):
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError
                    value = value.lower() in ("1", "true", "yes", "on")
                elif isinstance(current, int):
                    value = int(value, 0)
                elif isinstance(current, float):
                    value = float(value)
            except ValueError:
                raise ValueError(f"{type(cfg).__qualname__}.{key}: cannot read {value!r} as "
                                 f"{type(current).__name__}") from None
        typed[key] = value
    return dataclasses.replace(cfg, **typed)


def run_job(component, job: Job, simulator: str, waves: bool | str | Path = False) -> Result:
    """Run ``job`` on ``component`` in the named simulator."""
    if simulator == "amaranth":
        path = None
        if waves:
            path = Path(waves) if not isinstance(waves, bool) else Path("build/waves/amaranth.vcd")
        return _amaranth_run(component, job, path)
    if simulator in ("verilator", "icarus"):
        from vitaccel.sim import runner
        return runner.run(component, job, simulator=simulator, waves=bool(waves))
    raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, got {simulator!r}")


def _amaranth_run(component, job, path):
    from vitaccel.sim import amaranth_sim
    return amaranth_sim.run(component, job, waves=path)


def stall_profile(stalls) -> StallProfile:
    """``True``/``None``/a seed/a :class:`StallProfile` -> a profile (``False`` = no stalls)."""
    if isinstance(stalls, StallProfile):
        return stalls
    if stalls is False:
        return StallProfile.none()
    if stalls is True or stalls is None:
        return StallProfile()
    return StallProfile(seed=int(stalls))


def compare(want: dict, got: dict) -> list[str]:
    """Human-readable differences between two output dicts (empty list = bit-exact)."""
    problems = []
    for key in want:
        if key not in got:
            problems.append(f"{key}: missing from the RTL outputs")
            continue
        w, g = np.asarray(want[key]), np.asarray(got[key])
        if w.shape != g.shape:
            problems.append(f"{key}: shape {g.shape} != expected {w.shape}")
            continue
        bad = np.argwhere(w != g)
        if len(bad):
            idx = tuple(bad[0])
            problems.append(f"{key}: {len(bad)} of {w.size} values differ; first at {idx}: "
                            f"got {g[idx]}, expected {w[idx]}")
    return problems
