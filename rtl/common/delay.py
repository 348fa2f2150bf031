"""A value delayed by a chain of registers: the one pipeline-delay helper of the RTL.

Fixed-latency blocks (a requantiser, a block RAM read, a MAC line) carry the valid bit and the
sideband of a beat beside their datapath so that both leave together; every such chain is
``delay(m, value, LATENCY)``. With ``en`` the chain moves only in cycles with ``en`` high
(a pipeline frozen by back-pressure keeps its sideband in step with its data).
"""
from __future__ import annotations

from amaranth.hdl import Signal, Value
from amaranth.lib import data

__all__ = ["delay"]


def delay(m, value, cycles: int, *, en=None, name: str | None = None, domain: str = "sync",
          stages: bool = False):
    """``value`` through ``cycles`` registers in ``m``'s ``domain``.

    The registers have ``value``'s shape (a ``data.View`` keeps its layout) and are named
    ``{name}_d1`` .. ``{name}_d{cycles}`` (``name`` defaults to ``value``'s own name). Each loads
    in every cycle, or only in cycles with ``en`` high when ``en`` is given. Returns the last
    register (``value`` itself when ``cycles`` is 0); with ``stages=True`` the list of all the
    registers, first to last (empty for 0 cycles), e.g. to OR their valid bits into a busy flag.
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
        raise ValueError(f"delay: cycles must be a non-negative integer, got {cycles!r}")
    if name is None:
        target = Value.cast(value)
        name = target.name if isinstance(target, Signal) else "delay"
    chain = []
    for k in range(cycles):
        if isinstance(value, (Signal, data.View)):
            reg = Signal.like(value, name=f"{name}_d{k + 1}")
        else:
            reg = Signal(Value.cast(value).shape(), name=f"{name}_d{k + 1}")
        if en is None:
            m.d[domain] += reg.eq(value)
        else:
            with m.If(en):
                m.d[domain] += reg.eq(value)
        chain.append(reg)
        value = reg
    if stages:
        return chain
    return value
