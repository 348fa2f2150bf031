"""An add-only dot-product engine on leading-one codes: ``lanes`` code pairs per cycle.

Every cycle with ``in_valid`` it takes ``lanes`` pairs of LO codes, forms their signed
shift-products (:func:`~vitaccel.rtl.fact.codes.product_term`: exponent add, tiny mantissa table,
shift, conditional negate, in three registered stages), sums them in a registered adder tree and accumulates the sums from the
``in_first`` beat to the ``in_last`` beat. The total leaves on ``out_sum`` with the ``in_tag`` of
the ``in_last`` beat, ``latency`` cycles after it entered.

There is no back-pressure: the engine is a fixed-latency pipeline and its owner schedules it (the
predictor's consumers of ``out_*`` always accept). Every tree level is registered so the widest
adders (about 50 bits for the score engine) stay alone between flip-flops, for 100 MHz on ECP5.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .codes import code_layout, product_term, term_width

__all__ = ["LODotEngine"]


class LODotEngine(wiring.Component):
    """``lanes`` LO products per cycle, accumulated over a beat group.

    Parameters: ``lanes`` (>= 1), ``a_width``/``b_width`` (signed widths of the values the codes
    stand for), ``mantissa_bits``, ``acc_width`` (signed accumulator; the caller sizes it so the
    exact sum never overflows), ``tag_width`` (sideband carried to the output).
    """

    def __init__(self, lanes: int, a_width: int, b_width: int, mantissa_bits: int,
                 acc_width: int, tag_width: int = 1):
        for name, value in (("lanes", lanes), ("a_width", a_width), ("b_width", b_width),
                            ("acc_width", acc_width), ("tag_width", tag_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LODotEngine.{name} must be a positive integer, got {value!r}")
        self.lanes, self.mantissa_bits = lanes, mantissa_bits
        self.a_width, self.b_width, self.acc_width = a_width, b_width, acc_width
        self.levels = max(lanes - 1, 0).bit_length()
        #: cycles from an ``in_last`` beat to its ``out_valid``
        self.latency = 4 + self.levels
        super().__init__({
            "in_valid": In(1), "in_first": In(1), "in_last": In(1),
            "in_a": In(data.ArrayLayout(code_layout(a_width, mantissa_bits), lanes)),
            "in_b": In(data.ArrayLayout(code_layout(b_width, mantissa_bits), lanes)),
            "in_tag": In(unsigned(tag_width)),
            "out_valid": Out(1), "out_sum": Out(signed(acc_width)),
            "out_tag": Out(unsigned(tag_width)),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        tw = term_width(self.a_width, self.b_width)

        # Stage 0 registers the operand codes (they come straight from block RAM outputs);
        # stage 1 the product magnitudes (mantissa table + shifter); stage 2 the signed terms
        # (the negation), so no stage holds more than one wide operation.
        a0 = Signal.like(self.in_a, name="stage0_a")
        b0 = Signal.like(self.in_b, name="stage0_b")
        m.d.sync += [a0.eq(self.in_a), b0.eq(self.in_b)]
        flags = [Signal(3, name="stage0_flags")]          # valid, first, last
        tags = [Signal.like(self.in_tag, name="stage0_tag")]
        m.d.sync += [flags[0].eq(Cat(self.in_valid, self.in_first, self.in_last)),
                     tags[0].eq(self.in_tag)]
        terms = []
        for lane in range(P):
            sign, magnitude = product_term(m, a0[lane], b0[lane], self.mantissa_bits, tw,
                                           name=f"term{lane}")
            sign1 = Signal(name=f"term{lane}_sign1")
            mag1 = Signal.like(magnitude, name=f"term{lane}_mag1")
            m.d.sync += [sign1.eq(sign), mag1.eq(magnitude)]
            term = Signal(signed(tw), name=f"term{lane}_r")
            m.d.sync += term.eq(Mux(sign1, -mag1, mag1))
            terms.append(term)
        for stage in (1, 2):
            f, t = Signal(3, name=f"stage{stage}_flags"), Signal.like(self.in_tag, name=f"stage{stage}_tag")
            m.d.sync += [f.eq(flags[-1]), t.eq(tags[-1])]
            flags.append(f)
            tags.append(t)

        # Registered adder tree, one level per cycle.
        level = 0
        while len(terms) > 1:
            level += 1
            width = len(terms[0]) + 1
            nxt = []
            for i in range(0, len(terms), 2):
                s = Signal(signed(width), name=f"sum_l{level}_{i // 2}")
                m.d.sync += s.eq(terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i])
                nxt.append(s)
            terms = nxt
            f, t = Signal(3, name=f"flags_l{level}"), Signal.like(self.in_tag, name=f"tag_l{level}")
            m.d.sync += [f.eq(flags[-1]), t.eq(tags[-1])]
            flags.append(f)
            tags.append(t)

        # Accumulate over the beat group; emit on the last beat.
        valid, first, last = flags[-1][0], flags[-1][1], flags[-1][2]
        acc = Signal(signed(self.acc_width))
        total = Signal(signed(self.acc_width))
        m.d.comb += total.eq(Mux(first, 0, acc) + terms[0])
        m.d.sync += self.out_valid.eq(valid & last)
        with m.If(valid):
            m.d.sync += acc.eq(total)
            with m.If(last):
                m.d.sync += [self.out_sum.eq(total), self.out_tag.eq(tags[-1])]
        m.d.comb += self.active.eq(self.in_valid | self.out_valid | Cat(*(f[0] for f in flags)).any())
        return m

