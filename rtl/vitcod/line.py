"""One PE line: ``macs_per_line`` int8 MACs shared by both phases; the mode selects the operands.

Phase 1 (SDDMM, **K-stationary**): the operands are a Q word and a K word; the line reduces the
products in a lane tree and accumulates the dot product from the ``first`` chunk to the
``last`` one (inter-PE accumulation), then requantises it into the log2 domain (``t``, see
:func:`vitaccel.golden.vitcod.score_requant`). The score leaves on ``score`` with the sideband
it came with, :attr:`MacLine.SCORE_LATENCY` cycles after the line took its last chunk.

Phase 2 (SpMM, **output-stationary**): the operands are ``e = exp2(m - t)`` and a V word. ``e``
is the exp LUT's value (``(EXP_LUT << 1) >> s``, from :class:`~.operand_fetch.OperandFetch`)
shifted by the rest of the shift (a multiple of four: an 8-way choice) and rounded. The
products and ``e`` leave on ``prod`` and ``e`` with the pair's sideband,
:attr:`MacLine.PRODUCT_LATENCY` cycles after the operands; the accumulator sums them across
lines (:mod:`.accumulator`).

Stages: 2 (operands and ``e``, registered) -> 3 (products) -> 4 (lane tree) -> 5
(accumulate) -> the :class:`~vitaccel.rtl.common.requant.Requantizer`. There is no
back-pressure: the line is a fixed-latency pipeline scheduled by the issue logic, and its
consumers always accept.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import E_BITS, T_BITS
from vitaccel.rtl.common.delay import delay
from vitaccel.rtl.common.requant import SHIFT_WIDTH, Requantizer

from .layouts import (PRODUCT_BITS, col_bits, entry_pos_layout, line_tag_layout, score_layout,
                      score_tag_layout)

__all__ = ["MacLine"]


class MacLine(wiring.Component):
    """Inputs (stage 2): ``spmm`` (the mode), ``q``/``k`` and ``score_in`` (phase 1), ``lut``,
    ``hi``, ``eok``, ``v`` and ``pair_in`` (phase 2). Outputs: ``prod``, ``e``, ``pair_out``
    (stage 4), ``score`` (requantised), ``busy`` (a phase-1 result is on its way)."""

    #: Operands (stage 2) -> products, ``e`` and the pair's sideband (stage 4)
    PRODUCT_LATENCY = 2
    #: Operands of the last chunk (stage 2) -> ``score.v``: products, lane tree, accumulator,
    #: its register (stage 6), the requantiser
    SCORE_LATENCY = 4 + Requantizer.LATENCY

    def __init__(self, cfg):
        self.cfg = cfg
        P = cfg.macs_per_line
        super().__init__({
            "spmm": In(1),
            "q": In(8 * P), "k": In(8 * P), "v": In(8 * P),
            "lut": In(E_BITS + 2), "hi": In(range(8)), "eok": In(1),
            "score_in": In(score_tag_layout(cfg)),
            "pair_in": In(line_tag_layout(cfg)),
            "score_multiplier": In(16), "score_shift": In(SHIFT_WIDTH),
            "prod": Out(data.ArrayLayout(signed(PRODUCT_BITS), P)),
            "e": Out(E_BITS + 1),
            "pair_out": Out(line_tag_layout(cfg)),
            "score": Out(score_layout(cfg)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self.cfg.macs_per_line
        # stage 2: e = rshift_round(LUT, x >> T_FRAC) = (half + 1) >> 1; the operands
        half = Signal(E_BITS + 2)                         # (LUT << 1) >> (x >> T_FRAC)
        e = Signal(E_BITS + 1)
        m.d.comb += [half.eq(self.lut >> Cat(Const(0, 2), self.hi)),
                     e.eq(Mux(self.eok, (half + 1) >> 1, 0))]
        s3_a = [Signal(signed(E_BITS + 2), name=f"s3_a{j}") for j in range(P)]
        s3_b = [Signal(signed(8), name=f"s3_b{j}") for j in range(P)]
        for j in range(P):
            qv = self.q.word_select(j, 8).as_signed()
            kv = self.k.word_select(j, 8).as_signed()
            vv = self.v.word_select(j, 8).as_signed()
            m.d.sync += [s3_a[j].eq(Mux(self.spmm, e, qv)), s3_b[j].eq(Mux(self.spmm, vv, kv))]
        # stage 3: products (the line's P multipliers, shared by both modes)
        for j in range(P):
            m.d.sync += self.prod[j].eq(s3_a[j] * s3_b[j])
        m.d.comb += [self.e.eq(delay(m, delay(m, e, 1, name="s3_e"), 1, name="s4_e")),
                     self.pair_out.eq(delay(m, self.pair_in, 2, name="pair"))]
        # stage 4: the lane tree of the dot product
        s3, s4, s5 = delay(m, self.score_in, 3, name="score", stages=True)
        dot = Signal(signed(16 + ceil_log2(P) + 1), name="s5_dot")
        total = self.prod[0]
        for j in range(1, P):
            total = total + self.prod[j]
        m.d.sync += dot.eq(total)
        # stage 5: accumulate from the first chunk to the last; the last goes to the requantiser
        acc = Signal(signed(32), name="score_acc")
        with m.If(s5.v):
            m.d.sync += acc.eq(Mux(s5.first, 0, acc) + dot)
        s6 = Signal(data.StructLayout({"v": 1, "ok": 1, "pos": entry_pos_layout(),
                                       "col": unsigned(col_bits(self.cfg)),
                                       "row": unsigned(col_bits(self.cfg))}), name="s6")
        m.d.sync += [s6.v.eq(s5.v & s5.last), s6.ok.eq(s5.ok), s6.pos.eq(s5.pos),
                     s6.col.eq(s5.col), s6.row.eq(s5.row)]
        m.submodules.requant = rq = Requantizer(lanes=1, in_width=32, out_width=T_BITS)
        m.d.comb += [
            rq.i.valid.eq(s6.v), rq.i.payload[0].eq(acc),
            rq.multiplier.eq(self.score_multiplier), rq.shift.eq(self.score_shift),
            rq.o.ready.eq(1),          # never stalls: the requantiser has a fixed latency
        ]
        # the sideband beside the requantiser (its valid bits say a result is inside it)
        side = delay(m, s6, Requantizer.LATENCY, name="rq_tag", stages=True)
        out = side[-1]
        m.d.comb += [self.score.v.eq(rq.o.valid), self.score.t.eq(rq.o.payload[0]),
                     self.score.ok.eq(out.ok), self.score.pos.eq(out.pos),
                     self.score.col.eq(out.col), self.score.row.eq(out.row),
                     self.busy.eq(Cat(s3.v, s4.v, s5.v, s6.v, rq.o.valid,
                                      *(st.v for st in side)).any())]
        return m
