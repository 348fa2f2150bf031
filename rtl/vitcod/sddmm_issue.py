"""SDDMM: what both engines issue in each cycle of phase 1.

Denser engine, **K-stationary**: its ``ld`` lines hold the global keys ``gbase + l`` of a key
group while all N queries pass, ``f`` chunks per query, so a group takes ``N f`` cycles and the
engine ``dgroups`` groups. Sparser engine: each of its ``ls`` lines takes one CSC entry of a
group of ``ls`` consecutive entries (a column's key stays on the lines for as long as its entries
last) and reduces it over ``f`` chunks; the group's scores are written one per cycle, so a group
takes ``s_period = max(f, ls)`` cycles, of which the first ``f`` issue.

``start`` (the end of LOAD) rewinds both walks; they move while ``run`` is high (the SDDMM
state) and ``done`` says that neither engine has work left.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .layouts import run_layout, sddmm_issue_layout

__all__ = ["SddmmIssue"]


class SddmmIssue(wiring.Component):
    """``issue``: both engines' decisions of this cycle (see :func:`.sddmm_issue_layout`)."""

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "run": In(1), "params": In(run_layout(cfg)),
            "issue": Out(sddmm_issue_layout(cfg)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, o, lay = self.params, self.issue, sddmm_issue_layout(self.cfg)
        d_run, s_run = Signal(), Signal()
        d_gbase = Signal(lay["d_gbase"].shape)
        d_row = Signal(lay["d_row"].shape)
        d_word = Signal(lay["d_word"].shape)
        d_chunk = Signal(lay["d_chunk"].shape)
        s_kbase = Signal(lay["s_kbase"].shape)
        s_tick = Signal(range(max(self.cfg.chunks_max, self.cfg.lines) + 1))
        m.d.comb += [o.d.eq(self.run & d_run), o.s.eq(self.run & s_run & (s_tick < p.f)),
                     o.d_gbase.eq(d_gbase), o.d_row.eq(d_row), o.d_word.eq(d_word),
                     o.d_chunk.eq(d_chunk), o.s_kbase.eq(s_kbase), o.s_chunk.eq(s_tick),
                     self.done.eq(~d_run & ~s_run)]
        with m.If(o.d):
            with m.If(d_chunk == p.f_last):
                m.d.sync += [d_chunk.eq(0), d_word.eq(d_word + 1)]
                with m.If(d_row == p.n_last):
                    m.d.sync += [d_row.eq(0), d_gbase.eq(d_gbase + p.ld)]
                    with m.If(d_gbase + p.ld >= p.g):
                        m.d.sync += d_run.eq(0)
                with m.Else():
                    m.d.sync += d_row.eq(d_row + 1)
            with m.Else():
                m.d.sync += d_chunk.eq(d_chunk + 1)
        with m.If(self.run & s_run):
            with m.If(s_tick == p.s_period - 1):
                m.d.sync += [s_tick.eq(0), s_kbase.eq(s_kbase + p.ls)]
                with m.If(s_kbase + p.ls >= p.nnz):
                    m.d.sync += s_run.eq(0)
            with m.Else():
                m.d.sync += s_tick.eq(s_tick + 1)
        with m.If(self.start):
            m.d.sync += [d_gbase.eq(0), d_row.eq(0), d_word.eq(0), d_chunk.eq(0),
                         d_run.eq(p.g != 0), s_kbase.eq(0), s_tick.eq(0), s_run.eq(p.nnz != 0)]
        return m
