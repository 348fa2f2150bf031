"""NORMALISE: ``out = requantize(acc * r)`` with ``r = 2**RECIP_FRAC / l``, row by row, in order.

``normalisers`` slots, each with its own :class:`~vitaccel.rtl.common.divider.Reciprocal` (an
iterative divider, a few dozen cycles), take the handed-off rows round-robin, so the divisions
of consecutive rows overlap and a row leaves every ``latency / normalisers`` cycles. The slots
hand their rows, in the same order, to one product pipeline and a
:class:`~vitaccel.rtl.common.requant.Requantizer` to int8 on ``out``, one ``macs_per_line``-lane
chunk per beat.

The product pipeline has three registered steps, the last two being the Requantizer's split
product (partial products of 17-bit pieces of the accumulator, then their sum): the first
takes the slot in turn's chunk 0 and ``r``. The slot in turn streams its row out of its chunk
0 and shifts the other chunks down one per beat, so that step is a ``normalisers``-way choice of
``macs_per_line`` lanes, not a choice over every register of every slot. One enable moves the
whole pipe, as in the Requantizer: every step advances when the last one is empty or taken.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.golden.vitcod import ACC_BITS, E_BITS, RECIP_FRAC
from vitaccel.rtl.common.divider import Reciprocal
from vitaccel.rtl.common.requant import SHIFT_WIDTH, Requantizer, split_product

from .accumulator import row_layout
from .layouts import run_layout

__all__ = ["Normaliser"]


class Normaliser(wiring.Component):
    """``row`` (taken when ``handoff``; ``slot_free`` says the next slot can take one) ->
    ``out``; ``start`` (a command is accepted) rewinds the round-robin."""

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "params": In(run_layout(cfg)),
            "handoff": In(1), "row": In(row_layout(cfg)), "slot_free": Out(1),
            "out_multiplier": In(16), "out_shift": In(SHIFT_WIDTH),
            "out": Out(stream.Signature(data.ArrayLayout(signed(8), cfg.macs_per_line))),
        })

    def elaborate(self, platform):
        m = Module()
        K, FM, P = self.cfg.normalisers, self.cfg.chunks_max, self.cfg.macs_per_line
        SW = ACC_BITS + 1                              # accumulator width in a slot
        full = Signal(K)                               # holds a row
        rq_sent = Signal(K)                            # l handed to its reciprocal unit
        ready = Signal(K)                              # r known: may stream out
        slot_acc = [[Signal(signed(SW), name=f"norm{j}_acc{x}") for x in range(FM * P)]
                    for j in range(K)]
        slot_l = [Signal(len(self.row.l) + 1, name=f"norm{j}_l") for j in range(K)]
        slot_r = [Signal(E_BITS + 3, name=f"norm{j}_r") for j in range(K)]
        in_turn = Signal(range(K))
        out_turn = Signal(range(K))
        m.d.comb += self.slot_free.eq(~full.bit_select(in_turn, 1))
        with m.If(self.handoff):
            m.d.sync += in_turn.eq(Mux(in_turn == K - 1, 0, in_turn + 1))
            with m.Switch(in_turn):
                for j in range(K):
                    with m.Case(j):
                        m.d.sync += [full[j].eq(1), slot_l[j].eq(self.row.l)]
                        m.d.sync += [a.eq(x) for a, x in zip(slot_acc[j], self.row.acc)]

        for j in range(K):
            recip = Reciprocal(frac_bits=RECIP_FRAC, den_width=len(slot_l[j]),
                               out_width=E_BITS + 3)
            m.submodules[f"reciprocal{j}"] = recip
            m.d.comb += [recip.i.payload.eq(slot_l[j]),
                         recip.i.valid.eq(full[j] & ~rq_sent[j]),
                         recip.o.ready.eq(1)]
            with m.If(recip.i.valid & recip.i.ready):
                m.d.sync += rq_sent[j].eq(1)
            with m.If(recip.o.valid):
                m.d.sync += [slot_r[j].eq(recip.o.payload.value), ready[j].eq(1)]

        m.submodules.out_requant = orq = Requantizer(lanes=P, in_width=SW + E_BITS + 4,
                                                     out_width=8)
        wiring.connect(m, orq.o, wiring.flipped(self.out))
        m.d.comb += [orq.multiplier.eq(self.out_multiplier), orq.shift.eq(self.out_shift)]
        advance = Signal()
        sel_valid = Signal()
        sel_acc = [Signal(signed(SW), name=f"norm_sel_acc{x}") for x in range(P)]
        sel_r = Signal(len(slot_r[0]))
        part_valid = Signal()
        prod_valid = Signal()
        chunk = Signal(range(FM + 1))
        m.d.comb += [orq.i.valid.eq(prod_valid), advance.eq(~prod_valid | orq.i.ready)]
        feeding = Signal()
        m.d.comb += feeding.eq(ready.bit_select(out_turn, 1))
        with m.If(advance):
            m.d.sync += [sel_valid.eq(feeding), part_valid.eq(sel_valid),
                         prod_valid.eq(part_valid)]
            prods = [split_product(m, sel_acc[x], sel_r, SW + E_BITS + 4, name=f"norm_prod{x}")
                     for x in range(P)]
            with m.If(feeding):
                with m.Switch(out_turn):
                    for j in range(K):
                        with m.Case(j):
                            m.d.sync += sel_r.eq(slot_r[j])
                            m.d.sync += [sel_acc[x].eq(slot_acc[j][x]) for x in range(P)]
                            m.d.sync += [slot_acc[j][x].eq(slot_acc[j][x + P])
                                         for x in range(P * (FM - 1))]
                            with m.If(chunk == self.params.f_last):
                                m.d.sync += [full[j].eq(0), rq_sent[j].eq(0), ready[j].eq(0)]
                with m.If(chunk == self.params.f_last):
                    m.d.sync += [chunk.eq(0), out_turn.eq(Mux(out_turn == K - 1, 0, out_turn + 1))]
                with m.Else():
                    m.d.sync += chunk.eq(chunk + 1)
        m.d.comb += [orq.i.payload[x].eq(prods[x]) for x in range(P)]
        with m.If(self.start):
            m.d.sync += [in_turn.eq(0), out_turn.eq(0), chunk.eq(0)]
        return m
