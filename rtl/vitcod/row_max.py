"""SDDMM: one engine's row maxima, kept by read-modify-write as its scores are written.

So the softmax phase needs no extra pass over the scores, each engine keeps ``max_j t_ij`` per
row in a small memory (one per engine; phase 2 reads both and takes the larger). An update
offers a row and ``lanes`` candidate scores (the Denser engine: its lanes of one dense word;
the Sparser engine: one score). Pipeline, one update per cycle:

* stage 1 registers the update with the first level of the max tree over its lanes (lane
  pairs) and presents the row to the memory's read port;
* stage 2 registers the rest of the tree while the memory answers;
* C registers the read data beside the candidate, and the larger of the two is registered in W;
* W writes it back (a compare and a write behind the block RAM's output in one cycle would be
  one long path, so they are two).

The read is transparent for the write of its own cycle; the two later writes it cannot see, of
the two previous updates (being written in C's cycle, and written one cycle before), are
forwarded when they are for the same row, the newer first. The forward selects are registered
one cycle ahead, so the row compares do not sit in front of the max.

The same ports serve LOAD (``clear``: the row-count section writes ``T_MIN`` into each row,
taking precedence) and phase 2 (``spmm``: the read port follows ``spmm_row``, the Denser
engine's row).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import T_BITS

from .layouts import T_MIN, col_bits, max_update_layout

__all__ = ["RowMax", "max_level"]


def max_level(cand):
    """One level of a max tree: the larger of each pair (an odd last one passes)."""
    return ([Mux(cand[a] > cand[a + 1], cand[a], cand[a + 1])
             for a in range(0, len(cand) - 1, 2)] + ([cand[-1]] if len(cand) % 2 else []))


class RowMax(wiring.Component):
    """``update`` (valid, row, ``lanes`` candidates) -> the row's maximum in the memory behind
    ``wr``/``rd``; ``busy`` while an update is not written yet."""

    def __init__(self, cfg, lanes: int):
        self.cfg, self.lanes = cfg, lanes
        NM, CB = cfg.n_max, col_bits(cfg)
        super().__init__({
            "update": In(max_update_layout(cfg, lanes)),
            "clear": In(data.StructLayout({"v": 1, "row": unsigned(CB)})),
            "spmm": In(1), "spmm_row": In(range(NM + 1)),
            "wr": In(WritePort.Signature(addr_width=ceil_log2(NM), shape=signed(T_BITS))),
            "rd": In(ReadPort.Signature(addr_width=ceil_log2(NM), shape=signed(T_BITS))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        CB = col_bits(self.cfg)
        upd = self.update
        # stage 1: the first level of the tree; the read is presented
        pairs = max_level([upd.t[i] for i in range(self.lanes)])
        s1_v, s1_row = Signal(), Signal(CB)
        s1_t = [Signal(signed(T_BITS), name=f"s1_t{i}") for i in range(len(pairs))]
        m.d.sync += [s1_v.eq(upd.v), s1_row.eq(upd.row), *[r.eq(x) for r, x in zip(s1_t, pairs)]]
        m.d.comb += self.rd.addr.eq(Mux(self.spmm, self.spmm_row, s1_row))
        # stage 2: the rest of the tree; the read answers
        cand = s1_t
        while len(cand) > 1:
            cand = max_level(cand)
        v, row, t = Signal(), Signal(CB), Signal(signed(T_BITS))
        m.d.sync += [v.eq(s1_v), row.eq(s1_row), t.eq(cand[0])]
        # C: compare with the row's maximum (read, or forwarded from W or X); W: write
        c_v, w_v, x_v = (Signal(name=f"{st}_v") for st in "cwx")
        c_row, w_row, x_row = (Signal(CB, name=f"{st}_row") for st in "cwx")
        c_t = Signal(signed(T_BITS), name="c_t")
        c_rd = Signal(signed(T_BITS), name="c_rd")
        w_max, x_max = (Signal(signed(T_BITS), name=f"{st}_max") for st in "wx")
        # the forward selects, known one cycle ahead: in C, W holds what is in C now, and X
        # what is in W now
        c_hit_w, c_hit_x = Signal(name="fwd_w"), Signal(name="fwd_x")
        m.d.sync += [c_v.eq(v), c_row.eq(row), c_t.eq(t), c_rd.eq(self.rd.data),
                     c_hit_w.eq(c_v & (c_row == row)), c_hit_x.eq(w_v & (w_row == row))]
        cur = Mux(c_hit_w, w_max, Mux(c_hit_x, x_max, c_rd))
        m.d.sync += [w_v.eq(c_v), w_row.eq(c_row), w_max.eq(Mux(c_t > cur, c_t, cur)),
                     x_v.eq(w_v), x_row.eq(w_row), x_max.eq(w_max)]
        with m.If(self.clear.v):
            m.d.comb += [self.wr.en.eq(1), self.wr.addr.eq(self.clear.row),
                         self.wr.data.eq(T_MIN)]
        with m.Else():
            m.d.comb += [self.wr.en.eq(w_v), self.wr.addr.eq(w_row), self.wr.data.eq(w_max)]
        m.d.comb += self.busy.eq(s1_v | v | c_v | w_v)
        return m
