"""SpMM: the output rows of both engines, accumulated in place, and their hand-off.

Two accumulator banks, ping-pong by row parity: row x adds into bank x % 2. Each engine adds
into the bank of its own row, so in one cycle both banks may take sums (the Denser engine on
one row, the Sparser engine on the end of row A and the start of row B); integer sums do not
depend on the order, so this is bit-exact.

Stage 4 -> 5 gathers the lines' products (:class:`~.line.MacLine`, stage 4):

* Denser lines: an adder tree across the lines per lane, and the sum of their ``e`` into the
  row sum ``l`` (on the group's first chunk: a key's ``e`` counts once);
* Sparser lines: the pairs of one cycle have distinct chunks, so no tree: each chunk takes the
  products of the (at most one) line holding it, with that line's bank (a line-to-chunk
  crossbar), and the line holding chunk 0 brings its entry's ``e`` into ``l``.

Stage 5 adds them into the banks. A row is handed off once both engines' last ops for it have
been added (a done bit per bank and engine, set by the ``dlast``/``send`` sideband of the last
op) and the next normaliser slot is free (``slot_free``): ``handoff`` presents the bank as
``row`` for one cycle and clears it, which opens it for row x + 2.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import ACC_BITS, E_BITS

from .layouts import PRODUCT_BITS, line_tag_layout, run_layout, spmm_tag_layout

__all__ = ["Accumulator", "row_layout"]


def row_layout(cfg):
    """A finished output row: ``chunks_max * macs_per_line`` sums of ``e v`` and the row sum."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(ACC_BITS), cfg.chunks_max * cfg.macs_per_line),
        "l": unsigned(E_BITS + 1 + ceil_log2(cfg.n_max + 1) + 1),
    })


class Accumulator(wiring.Component):
    """Inputs (stage 4): ``prod``/``e``/``pair`` of every line and the shared ``tag``;
    ``start`` (phase 2 begins: no row done, bank 0 next); ``slot_free``. Outputs ``handoff`` and
    ``row`` (the bank being handed off)."""

    #: Stage 4 -> the banks hold the sums (the gather register, then the add)
    LATENCY = 2

    def __init__(self, cfg):
        self.cfg = cfg
        L, P = cfg.lines, cfg.macs_per_line
        super().__init__({
            "start": In(1), "params": In(run_layout(cfg)),
            "prod": In(data.ArrayLayout(data.ArrayLayout(signed(PRODUCT_BITS), P), L)),
            "e": In(data.ArrayLayout(unsigned(E_BITS + 1), L)),
            "pair": In(data.ArrayLayout(line_tag_layout(cfg), L)),
            "tag": In(spmm_tag_layout(cfg)),
            "slot_free": In(1),
            "handoff": Out(1),
            "row": Out(row_layout(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        g = self._gather(m)
        FM, P = self.cfg.chunks_max, self.cfg.macs_per_line
        t5 = g["tag"]
        rows = row_layout(self.cfg)
        acc = [[Signal(signed(ACC_BITS), name=f"acc{b}_{x}") for x in range(FM * P)]
               for b in range(2)]
        lsum = [Signal(rows["l"].shape, name=f"lsum{b}") for b in range(2)]
        clear = Signal(2)
        for b in range(2):
            d_here = t5.d & (t5.dbank == b)
            with m.If(clear[b]):
                m.d.sync += [a.eq(0) for a in acc[b]] + [lsum[b].eq(0)]
            with m.Else():
                for c in range(FM):
                    s_here = g["sv"][c] & (g["sbank"][c] == b)
                    for j in range(P):
                        m.d.sync += acc[b][c * P + j].eq(
                            acc[b][c * P + j] + Mux(d_here & (t5.dchunk == c), g["dsum"][j], 0)
                            + Mux(s_here, g["sval"][c][j], 0))
                m.d.sync += lsum[b].eq(lsum[b] + Mux(d_here & t5.dfirst, g["de"], 0)
                                       + Mux(g["sv"][0] & (g["sbank"][0] == b), g["se"], 0))

        d_done = Signal(2)                  # the Denser engine's last op of the bank's row added
        s_done = Signal(2)                  # the Sparser engine's likewise
        bank = Signal()                     # rows are handed off in order: banks alternate
        with m.If(t5.dlast):
            m.d.sync += d_done.bit_select(t5.dbank, 1).eq(1)
        with m.If(t5.send):
            m.d.sync += s_done.bit_select(t5.sbank, 1).eq(1)
        # A row's last ops update its bank in the cycle that sets its done bits: hand off
        # (copy and clear) from the next cycle on
        m.d.comb += self.handoff.eq(d_done.bit_select(bank, 1) & s_done.bit_select(bank, 1)
                                    & self.slot_free)
        with m.If(self.handoff):
            m.d.comb += clear.bit_select(bank, 1).eq(1)
            m.d.sync += [d_done.bit_select(bank, 1).eq(0), s_done.bit_select(bank, 1).eq(0),
                         bank.eq(~bank)]
        m.d.comb += [self.row.l.eq(Mux(bank, lsum[1], lsum[0]))]
        m.d.comb += [self.row.acc[x].eq(Mux(bank, acc[1][x], acc[0][x])) for x in range(FM * P)]
        with m.If(self.start):
            m.d.sync += [d_done.eq(0), s_done.eq(0), bank.eq(0)]
        return m

    def _gather(self, m):
        """Stage 4 -> 5: the Denser lines' tree, the Sparser lines' crossbar (registered)."""
        L, P, FM = self.cfg.lines, self.cfg.macs_per_line, self.cfg.chunks_max
        dense, prod, e, pair = self.params.dense_lines, self.prod, self.e, self.pair
        sum_w = PRODUCT_BITS + ceil_log2(L) + 1
        dsum = [Signal(signed(sum_w), name=f"s5_dsum{j}") for j in range(P)]
        de = Signal(E_BITS + 1 + ceil_log2(L) + 1, name="s5_de")
        for j in range(P):
            total = 0
            for ln in range(L):
                total = total + Mux(dense[ln], prod[ln][j], 0)
            m.d.sync += dsum[j].eq(total)
        total = 0
        for ln in range(L):
            total = total + Mux(dense[ln], e[ln], 0)
        m.d.sync += de.eq(total)
        tag = Signal(spmm_tag_layout(self.cfg), name="s5_tag")
        m.d.sync += tag.eq(self.tag)
        sval = [[Signal(signed(PRODUCT_BITS), name=f"s5_sval{c}_{j}") for j in range(P)]
                for c in range(FM)]
        sv = Signal(FM, name="s5_sv")
        sbank = Signal(FM, name="s5_sbank")
        se = Signal(E_BITS + 1, name="s5_se")
        for c in range(FM):
            hit = [~dense[ln] & pair[ln].v & (pair[ln].chunk == c) for ln in range(L)]
            for j in range(P):
                val = 0
                for ln in range(L):
                    val = val | Mux(hit[ln], prod[ln][j], 0)
                m.d.sync += sval[c][j].eq(val)
            bank = 0
            any_hit = 0
            for ln in range(L):
                bank = bank | (hit[ln] & pair[ln].bank)
                any_hit = any_hit | hit[ln]
            m.d.sync += [sv[c].eq(any_hit), sbank[c].eq(bank)]
            if c == 0:
                e0 = 0
                for ln in range(L):
                    e0 = e0 | Mux(hit[ln], e[ln], 0)
                m.d.sync += se.eq(e0)
        return {"dsum": dsum, "de": de, "tag": tag, "sval": sval, "sv": sv, "sbank": sbank,
                "se": se}
