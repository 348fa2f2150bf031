"""SDDMM: the lines' scores into the score buffers, and the row-max updates they cause.

Dense scores: the Denser lines finish a (key group, query) together, so their scores are one
``lines``-lane word of the dense score buffer (each lane with its validity bit), written at once.
Sparse scores: each goes to its entry's row-order position, the (word, bank) of the ``lines``
score banks, so that phase 2 reads a row's entries in order. A group's scores arrive together
but a bank takes one write per cycle, so each line parks its score in a holding register and
the writer drains them one per cycle, lowest line first (the Sparser engine's SDDMM group lasts
at least ``lines_s`` cycles, so the registers are empty again before the next group's scores).
The block RAMs' write pins see registers only (the requantisers' outputs, the holding
registers through a one-of-``lines`` multiplexer).

Every write also updates the row maxima (:mod:`.row_max`): ``dense_max`` offers the dense
lanes of a dense write (``T_MIN`` where the score does not count), ``sparse_max`` the score
being written to a bank.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.golden.vitcod import T_BITS

from .layouts import (T_MIN, bank_depth, bank_layout, col_bits, dense_depth, entry_pos_layout,
                      lane_layout, max_update_layout, run_layout, score_layout)

__all__ = ["ScoreWriter", "banked_write_signature"]


def banked_write_signature(width: int, depth: int):
    """The write side of a :class:`~vitaccel.rtl.common.banked.BankedMemory` (one granule)."""
    return wiring.Signature({"addr": Out(range(depth)), "data": Out(unsigned(width)),
                             "en": Out(1)})


class ScoreWriter(wiring.Component):
    """``scores[l]`` (line ``l``'s requantised score) with ``dword`` (the dense word they belong
    to, for Denser lines) -> ``dense_wr`` and ``bank_wr[b]``; ``busy`` while a score waits."""

    def __init__(self, cfg):
        self.cfg = cfg
        L = cfg.lines
        self.dense_width = data.ArrayLayout(lane_layout(), L).size
        super().__init__({
            "params": In(run_layout(cfg)),
            "scores": In(data.ArrayLayout(score_layout(cfg), L)),
            "dword": In(range(dense_depth(cfg) + cfg.n_max + 1)),
            "dense_wr": Out(banked_write_signature(self.dense_width, dense_depth(cfg))),
            "bank_wr": Out(banked_write_signature(bank_layout(cfg).size,
                                                  bank_depth(cfg))).array(L),
            "dense_max": Out(max_update_layout(cfg, L)),
            "sparse_max": Out(max_update_layout(cfg, 1)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L, dense, sc = self.cfg.lines, self.params.dense_lines, self.scores
        # dense: all Denser lines finish together
        write = Signal()
        word = Signal(data.ArrayLayout(lane_layout(), L))
        m.d.comb += [write.eq(sc[0].v & dense[0]),
                     self.dense_wr.addr.eq(self.dword), self.dense_wr.en.eq(write),
                     self.dense_wr.data.eq(word)]
        for ln in range(L):
            m.d.comb += [word[ln].t.eq(sc[ln].t), word[ln].ok.eq(dense[ln] & sc[ln].ok)]
        m.d.comb += [self.dense_max.v.eq(write), self.dense_max.row.eq(sc[0].row)]
        m.d.comb += [self.dense_max.t[ln].eq(Mux(dense[ln] & sc[ln].ok, sc[ln].t, T_MIN))
                     for ln in range(L)]

        # sparse: one holding register per line, drained one per cycle into the banks
        hold_layout = data.StructLayout({"t": signed(T_BITS), "pos": entry_pos_layout(),
                                         "col": unsigned(col_bits(self.cfg)),
                                         "row": unsigned(col_bits(self.cfg))})
        full = Signal(L)
        hold = [Signal(hold_layout, name=f"l{ln}_hold") for ln in range(L)]
        sel = Signal(range(L))
        any_full = Signal()
        for ln in reversed(range(L)):                # the lowest full line wins
            with m.If(full[ln]):
                m.d.comb += [sel.eq(ln), any_full.eq(1)]
        out = Signal(hold_layout)
        with m.Switch(sel):
            for ln in range(L):
                with m.Case(ln):
                    m.d.comb += out.eq(hold[ln])
        for b, wr in enumerate(self.bank_wr):
            lane = bank_layout(self.cfg)(wr.data)
            m.d.comb += [wr.addr.eq(out.pos.word), lane.t.eq(out.t), lane.col.eq(out.col),
                         wr.en.eq(any_full & (out.pos.bank == b)
                                  & (out.pos.word < bank_depth(self.cfg)))]
        for ln in range(L):
            with m.If(sc[ln].v & ~dense[ln] & sc[ln].ok):
                m.d.sync += [full[ln].eq(1), hold[ln].t.eq(sc[ln].t), hold[ln].pos.eq(sc[ln].pos),
                             hold[ln].col.eq(sc[ln].col), hold[ln].row.eq(sc[ln].row)]
            with m.Elif(any_full & (sel == ln)):
                m.d.sync += full[ln].eq(0)
        m.d.comb += [self.sparse_max.v.eq(any_full), self.sparse_max.row.eq(out.row),
                     self.sparse_max.t[0].eq(out.t), self.busy.eq(full != 0)]
        return m
