"""What running a job on a unit returns, whichever runner ran it.

The simulators (:mod:`vitaccel.sim.amaranth_sim`, :mod:`vitaccel.sim.runner`) and a board
(:meth:`vitaccel.boards.host.HostClient.run_job`) both return a :class:`Result`. It lives in this
neutral module so that ``vitaccel.boards`` need not import ``vitaccel.sim``;
:mod:`vitaccel.sim.job` re-exports it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["Result"]


@dataclass
class Result:
    """Collected output beats (per output stream), plain output values read at the end, and the
    cycle count the runner measured."""
    outputs: dict[str, list[int]]
    status: dict[str, int]
    cycles: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Result":
        return cls(**json.loads(text))
