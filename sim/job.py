"""A simulation job: what to push into a component's streams and what to collect from it.

One job description serves both simulators (the Amaranth Python simulator in
:mod:`vitaccel.sim.amaranth_sim` and cocotb in :mod:`vitaccel.sim.tb_streams`), so a unit's driver
encodes its NumPy inputs once and decodes the collected beats once.

Beats are plain Python ints holding the flat payload (first layout field / element 0 in the low
bits, as Amaranth lays out ``lib.data`` views). :func:`pack` / :func:`unpack` convert lanes.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from amaranth.hdl import Shape

# Result and the port helpers live in neutral modules (so that vitaccel.boards, which uses them
# too, need not import vitaccel.sim); they are re-exported here, where simulation code finds them.
from vitaccel.result import Result
from vitaccel.rtl.common.ports import plain_ports, stream_ports

__all__ = ["Job", "Result", "SimulationError", "StallProfile", "pack", "unpack", "stream_ports",
           "plain_ports", "pack_fields", "unpack_fields"]


class SimulationError(RuntimeError):
    """The design did not finish (timeout), broke the stream protocol, or a simulator failed."""


@dataclass(frozen=True)
class StallProfile:
    """Seeded random stalls: ``valid_gap`` = probability that a driver idles for a cycle before a
    beat, ``ready_gap`` = probability that a sink holds ``ready`` low in a cycle. ``seed=None`` means
    no stalls at all (benchmarks)."""
    seed: int | None = 0
    valid_gap: float = 0.3
    ready_gap: float = 0.3

    @classmethod
    def none(cls):
        return cls(seed=None, valid_gap=0.0, ready_gap=0.0)

    def __post_init__(self):
        for name in ("valid_gap", "ready_gap"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"StallProfile.{name} must be in [0, 1), got {p}")


@dataclass
class Job:
    """Inputs for one run of a stream component.

    inputs:  input stream port name -> list of payload ints, sent in order.
    expect:  output stream port name -> number of beats to collect; the run ends when all arrived.
    statics: plain input port name -> value, held for the whole run.
    status:  plain output port names to read once the run ends.
    max_cycles: the run fails with a clear error (and a waveform if asked) past this.
    """
    inputs: dict[str, list[int]]
    expect: dict[str, int]
    statics: dict[str, int] = field(default_factory=dict)
    status: list[str] = field(default_factory=list)
    max_cycles: int = 1_000_000
    stalls: StallProfile = field(default_factory=StallProfile)

    def check_ports(self, component):
        """Raise ``ValueError`` unless every port the job names exists on ``component`` with the
        right direction; return ``(ins, outs, plain_in, plain_out)`` as from :func:`stream_ports`
        and :func:`plain_ports`."""
        ins, outs = stream_ports(component)
        plain_in, plain_out = plain_ports(component)
        for name in self.inputs:
            if name not in ins:
                raise ValueError(f"job input {name!r} is not an input stream of the component "
                                 f"(have {sorted(ins)})")
        for name in self.expect:
            if name not in outs:
                raise ValueError(f"job output {name!r} is not an output stream of the component "
                                 f"(have {sorted(outs)})")
        for name in self.statics:
            if name not in plain_in:
                raise ValueError(f"static {name!r} is not a plain input port of the component "
                                 f"(have {sorted(plain_in)})")
        for name in self.status:
            if name not in plain_in and name not in plain_out:
                raise ValueError(f"{name!r} is not a plain port of the component")
        return ins, outs, plain_in, plain_out

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        d = json.loads(text)
        d["stalls"] = StallProfile(**d["stalls"])
        return cls(**d)


def pack(lanes, width: int) -> int:
    """Pack integers (two's complement, ``width`` bits each) into one int, lane 0 lowest."""
    mask = (1 << width) - 1
    word = 0
    for i, v in enumerate(np.asarray(lanes).ravel().tolist()):
        word |= (int(v) & mask) << (i * width)
    return word


def unpack(word: int, width: int, count: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack`: ``count`` lanes of ``width`` bits, sign-extended if ``signed``."""
    mask = (1 << width) - 1
    out = np.empty(count, dtype=np.int64)
    for i in range(count):
        v = (word >> (i * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        out[i] = v
    return out


def pack_fields(layout, **values) -> int:
    """Pack named field values into the flat int of a ``data.StructLayout`` payload."""
    word = 0
    names = {name for name, _ in layout}
    for name in values:
        if name not in names:
            raise ValueError(f"layout has no field {name!r} (fields: {sorted(names)})")
    for name, fld in layout:
        width = Shape.cast(fld.shape).width
        word |= (int(values.get(name, 0)) & ((1 << width) - 1)) << fld.offset
    return word


def unpack_fields(layout, word: int) -> dict:
    """Inverse of :func:`pack_fields` (signed fields sign-extended)."""
    out = {}
    for name, fld in layout:
        shape = Shape.cast(fld.shape)
        v = (word >> fld.offset) & ((1 << shape.width) - 1)
        if shape.signed and v >> (shape.width - 1):
            v -= 1 << shape.width
        out[name] = v
    return out
