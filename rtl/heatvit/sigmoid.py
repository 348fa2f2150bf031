"""Shift-only sigmoid on a Q8 stream (golden twin: ``golden.heatvit.sigmoid_q``).

PLAN (Amin et al.): ``|x| >= 5 -> 1``, ``[2.375, 5) -> |x|/32 + 0.84375``, ``[1, 2.375) -> |x|/8 +
0.625``, ``[0, 1) -> |x|/4 + 0.5``, negative ``x -> 1 - y``; every shift rounds RHU (the project's one
rounding rule: one incrementer on the bit below the cut). ``kind="hard"``: ``clip(x/4 + 1/2, 0, 1)``.
Input int16 Q8, output unsigned 9-bit Q8 in [0, 256].

Two register stages (magnitude and segment select, then the add and the reflection); one beat per
cycle; the enable ``~o.valid | o.ready`` moves the whole pipe, so ``valid`` never depends on ``ready``.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Sigmoid"]


def _rhu(value, shift):
    """RHU right shift of a non-negative value by a constant ``shift >= 1``."""
    return (value + (1 << (shift - 1))) >> shift


class Sigmoid(wiring.Component):
    """``i``: stream of signed(in_width) Q8; ``o``: stream of unsigned(9) Q8 in [0, 256]."""

    LATENCY = 2

    def __init__(self, kind: str = "plan", in_width: int = 16):
        if kind not in ("plan", "hard"):
            self._MustUse__used = True
            raise ValueError(f"Sigmoid.kind must be 'plan' or 'hard', got {kind!r}")
        self.kind = kind
        self.in_width = in_width
        super().__init__({
            "i": In(stream.Signature(signed(in_width))),
            "o": Out(stream.Signature(unsigned(9))),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        x = self.i.payload

        v1 = Signal()
        neg1 = Signal()
        y1 = Signal(unsigned(self.in_width + 1))    # the non-negative half, before reflection
        with m.If(en):
            m.d.sync += [v1.eq(self.i.valid), self.o.valid.eq(v1)]
            if self.kind == "hard":
                # clip(rhu(x, 2) + 128, 0, 256): rhu of a signed value is floor((x + 2) / 4)
                q = Signal(signed(self.in_width))
                m.d.comb += q.eq((x + 2) >> 2)
                m.d.sync += y1.eq(Mux(q >= 128, 256, Mux(q <= -128, 0, q + 128)))
                m.d.sync += neg1.eq(0)
            else:
                ax = Signal(unsigned(self.in_width))
                m.d.comb += ax.eq(Mux(x < 0, -x, x))
                m.d.sync += [
                    neg1.eq(x < 0),
                    y1.eq(Mux(ax >= 5 * 256, 256,
                              Mux(ax >= 608, _rhu(ax, 5) + 216,
                                  Mux(ax >= 256, _rhu(ax, 3) + 160, _rhu(ax, 2) + 128)))),
                ]
            m.d.sync += self.o.payload.eq(Mux(neg1, 256 - y1, y1))
        return m


def plan_sigmoid(m: Module, x, kind: str = "plan", name: str = "sig"):
    """The same function as :class:`Sigmoid`, combinational, for use inside other blocks (the
    selector's decision loop and head-weight write-back). Returns an unsigned(9) signal."""
    width = len(x)
    y = Signal(unsigned(9), name=name)
    if kind == "hard":
        q = Signal(signed(width), name=f"{name}_q")
        m.d.comb += [q.eq((x + 2) >> 2),
                     y.eq(Mux(q >= 128, 256, Mux(q <= -128, 0, q + 128)))]
        return y
    ax = Signal(unsigned(width), name=f"{name}_abs")
    pos = Signal(unsigned(9), name=f"{name}_pos")
    m.d.comb += [
        ax.eq(Mux(x < 0, -x, x)),
        pos.eq(Mux(ax >= 5 * 256, 256,
                   Mux(ax >= 608, _rhu(ax, 5) + 216,
                       Mux(ax >= 256, _rhu(ax, 3) + 160, _rhu(ax, 2) + 128)))),
        y.eq(Mux(x < 0, 256 - pos, pos)),
    ]
    return y
