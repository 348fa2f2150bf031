"""Divider array: ``lanes`` RHU dividers (:class:`vitaccel.rtl.common.divider.Divider`) side by side.

ViTALiTy divides in two places: step 1 divides every K column sum by the same token count ``n``
(**single-divisor mode**, ``shared_divisor=True``: one divisor port for all lanes) and step 6 divides
by one denominator per row (**per-row-divisor mode**, ``shared_divisor=False``: one divisor per
lane). Each lane is bit-exact with :func:`vitaccel.golden.fixedpoint.div_round`.

The lanes start together and finish together: the input is accepted only when every lane is idle,
and the output is valid only when every lane holds its quotient (lanes whose divisor is zero finish
early and wait). Throughput is one beat per :attr:`latency` cycles.
"""
from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common.divider import Divider

__all__ = ["DividerArray"]


class DividerArray(wiring.Component):
    """``lanes`` dividers on one stream.

    Ports
    -----
    i : In(stream of {"numerators": lanes x signed(num_width),
                      "divisor": unsigned(den_width)}            (shared_divisor)
                      "divisors": lanes x unsigned(den_width)}   (per-row divisors))
    o : Out(stream of {"quotients": lanes x out shape, "div_by_zero": lanes x 1})
    """

    def __init__(self, lanes: int, num_width: int, den_width: int, out_width: int,
                 out_signed: bool = True, shared_divisor: bool = True):
        if not isinstance(lanes, int) or lanes < 1:
            self._MustUse__used = True
            raise ValueError(f"DividerArray.lanes must be a positive integer, got {lanes!r}")
        self.lanes = lanes
        self.shared_divisor = shared_divisor
        self._dividers = [Divider(num_width, den_width, out_width, out_signed)
                          for _ in range(lanes)]
        self.latency = self._dividers[0].latency
        out_shape = signed(out_width) if out_signed else unsigned(out_width)
        fields = {"numerators": data.ArrayLayout(signed(num_width), lanes)}
        if shared_divisor:
            fields["divisor"] = unsigned(den_width)
        else:
            fields["divisors"] = data.ArrayLayout(unsigned(den_width), lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout(fields))),
            "o": Out(stream.Signature(data.StructLayout({
                "quotients": data.ArrayLayout(out_shape, lanes),
                "div_by_zero": data.ArrayLayout(1, lanes)}))),
        })

    def elaborate(self, platform):
        m = Module()
        all_ready = 1
        all_valid = 1
        for lane, div in enumerate(self._dividers):
            m.submodules[f"lane{lane}"] = div
            all_ready = all_ready & div.i.ready
            all_valid = all_valid & div.o.valid
        for lane, div in enumerate(self._dividers):
            divisor = (self.i.payload.divisor if self.shared_divisor
                       else self.i.payload.divisors[lane])
            m.d.comb += [
                # A lane may only start when all start, so that they stay in lockstep.
                div.i.valid.eq(self.i.valid & all_ready),
                div.i.payload.numerator.eq(self.i.payload.numerators[lane]),
                div.i.payload.denominator.eq(divisor),
                div.o.ready.eq(self.o.ready & all_valid),
                self.o.payload.quotients[lane].eq(div.o.payload.quotient),
                self.o.payload.div_by_zero[lane].eq(div.o.payload.div_by_zero),
            ]
        m.d.comb += [self.i.ready.eq(all_ready), self.o.valid.eq(all_valid)]
        return m
