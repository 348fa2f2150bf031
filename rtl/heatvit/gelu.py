"""Integer GELU (I-BERT polynomial, HeatViT's delta1) on a stream of accumulators.

Golden twin: ``golden.heatvit.gelu_q``, bit for bit::

    x = requantize(acc, (in_multiplier, in_shift), 16)             Q10   (shared Requantizer)
    t = min(rhu(|x| * 23170, 15), 1811)                            |x|/sqrt2 clipped at 1.769
    L = sgn(x) * (rhu(a * (t - 1811)^2, 20) + one)                 a, one carry delta1
    out = requantize(x * (2^14 + L), (out_multiplier, out_shift), 8)     (shared Requantizer)

Structure: :class:`~vitaccel.rtl.common.requant.Requantizer` -> :class:`GELUPoly` ->
``Requantizer``. ``GELUPoly`` is an 8-stage pipeline with one multiplier per stage (|x| * const,
p^2, a * p^2, x * f), each registered on both sides so it maps onto one DSP with a short path;
the factor ``f`` (a 39-bit rounding add, the ``one`` add and a signed select) has a stage of its
own, because in front of the last multiplier it was the ULX3S critical path (17.4 ns).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.golden.heatvit import GELU_CLIP, INV_SQRT2_Q15
from vitaccel.rtl.common.requant import SHIFT_WIDTH, Requantizer

__all__ = ["GELU", "GELUPoly"]


class GELUPoly(wiring.Component):
    """``x`` (int16 Q10) -> ``x * (2^14 + L(x / sqrt 2))`` (int32, Q25 of GELU(x) * 2).

    ``a`` (signed 16) and ``one`` (unsigned 15) are ``round(delta1 * -0.2888 * 2^14)`` and
    ``round(delta1 * 2^14)``; sampled with each beat.
    """

    LATENCY = 8

    def __init__(self):
        super().__init__({
            "i": In(stream.Signature(signed(16))),
            "o": Out(stream.Signature(signed(32))),
            "a": In(signed(16)),
            "one": In(unsigned(15)),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        depth = self.LATENCY
        valid = [Signal(name=f"valid{k}") for k in range(depth - 1)]
        xs = [Signal(signed(16), name=f"x{k}") for k in range(depth - 1)]   # x follows the pipe
        # a and one travel with their beat: a[k] / one[k] belong to stage k + 1.
        a = [Signal(signed(16), name=f"a{k}") for k in range(5)]
        one = [Signal(unsigned(15), name=f"one{k}") for k in range(6)]

        ax1 = Signal(unsigned(16))                   # S1: |x| (|-32768| = 32768 needs 16 bits)
        m2 = Signal(unsigned(31))                    # S2: |x| * 23170
        t3 = Signal(unsigned(11))                    # S3: min(rhu(m, 15), 1811)
        p4 = Signal(signed(12))                      # S4: t - 1811 (<= 0)
        sq5 = Signal(unsigned(22))                   # S5: p^2
        ap6 = Signal(signed(39))                     # S6: a * p^2 (registered product)
        # S7: f = 2^14 + sgn(x) * (rhu(ap, 20) + one); S8 (output): x * f
        lmag = Signal(signed(20))
        f = Signal(signed(18))
        f7 = Signal(signed(18))
        x6 = xs[5]
        m.d.comb += [
            lmag.eq(((ap6 + (1 << 19)) >> 20) + one[5]),
            f.eq(Mux(x6 > 0, (1 << 14) + lmag, Mux(x6 < 0, (1 << 14) - lmag, 1 << 14))),
        ]

        with m.If(en):
            m.d.sync += [valid[0].eq(self.i.valid), xs[0].eq(self.i.payload),
                         a[0].eq(self.a), one[0].eq(self.one)]
            for k in range(1, depth - 1):
                m.d.sync += [valid[k].eq(valid[k - 1]), xs[k].eq(xs[k - 1])]
            for k in range(1, 5):
                m.d.sync += a[k].eq(a[k - 1])
            for k in range(1, 6):
                m.d.sync += one[k].eq(one[k - 1])
            m.d.sync += [
                ax1.eq(Mux(self.i.payload < 0, -self.i.payload, self.i.payload)),
                m2.eq(ax1 * INV_SQRT2_Q15),
                t3.eq(Mux(((m2 + (1 << 14)) >> 15) > GELU_CLIP, GELU_CLIP, (m2 + (1 << 14)) >> 15)),
                p4.eq(t3 - GELU_CLIP),
                sq5.eq(p4 * p4),
                ap6.eq(a[4] * sq5),
                f7.eq(f),
                self.o.valid.eq(valid[6]),
                self.o.payload.eq(xs[6] * f7),
            ]
        return m


class GELU(wiring.Component):
    """``i``: stream of signed(in_width) accumulators; ``o``: stream of signed(8) GELU outputs.

    Plain ports (held during a run): ``in_multiplier``/``in_shift`` (accumulator scale * 2^10),
    ``out_multiplier``/``out_shift`` (2^-25 / output scale), ``a``/``one`` (delta1 constants).
    """

    def __init__(self, in_width: int = 32, multiplier_bits: int = 16):
        self.in_width = in_width
        self._rq_in = Requantizer(1, in_width=in_width, out_width=16, multiplier_bits=multiplier_bits)
        self._poly = GELUPoly()
        self._rq_out = Requantizer(1, in_width=32, out_width=8, multiplier_bits=multiplier_bits)
        self.latency = 2 * Requantizer.LATENCY + GELUPoly.LATENCY
        super().__init__({
            "i": In(stream.Signature(signed(in_width))),
            "o": Out(stream.Signature(signed(8))),
            "in_multiplier": In(unsigned(multiplier_bits)),
            "in_shift": In(unsigned(SHIFT_WIDTH)),
            "out_multiplier": In(unsigned(multiplier_bits)),
            "out_shift": In(unsigned(SHIFT_WIDTH)),
            "a": In(signed(16)),
            "one": In(unsigned(15)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rq_in = rq_in = self._rq_in
        m.submodules.poly = poly = self._poly
        m.submodules.rq_out = rq_out = self._rq_out
        m.d.comb += [
            rq_in.i.valid.eq(self.i.valid), rq_in.i.payload[0].eq(self.i.payload),
            self.i.ready.eq(rq_in.i.ready),
            rq_in.multiplier.eq(self.in_multiplier), rq_in.shift.eq(self.in_shift),
            poly.i.valid.eq(rq_in.o.valid), poly.i.payload.eq(rq_in.o.payload[0]),
            rq_in.o.ready.eq(poly.i.ready),
            poly.a.eq(self.a), poly.one.eq(self.one),
            rq_out.i.valid.eq(poly.o.valid), rq_out.i.payload[0].eq(poly.o.payload),
            poly.o.ready.eq(rq_out.i.ready),
            rq_out.multiplier.eq(self.out_multiplier), rq_out.shift.eq(self.out_shift),
            self.o.valid.eq(rq_out.o.valid), self.o.payload.eq(rq_out.o.payload[0]),
            rq_out.o.ready.eq(self.o.ready),
        ]
        return m
