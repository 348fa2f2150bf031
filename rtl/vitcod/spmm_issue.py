"""SpMM: what each engine issues in each cycle of phase 2 (SOFTMAX + SpMM, output-stationary).

The two engines walk the rows independently and add into the accumulator bank of their own row
(row x uses bank x % 2, see :mod:`.accumulator`), so each may be at most one row ahead of the
oldest row not yet handed to the normalisers. Each keeps its ``lead`` over that row (0..2,
stepped by its own row ends and by ``handoff``) and whether it has rows left (``more``) as
registers, so that no row number is compared at issue time.

:class:`DenserWalk`: ``f`` chunks per key group of ``ld`` global keys, ``dgroups`` groups per
row (G = 0: a row passes in one cycle, no op).

:class:`SparserPacker`: the row-ordered entries are a stream of (entry, chunk) pairs, ``s_win
= min(ls, f)`` consecutive pairs per cycle, one per Sparser line (consecutive pairs have distinct
chunks, so the accumulator needs no adder tree across lines). The stream runs on across row
boundaries: a cycle that reaches the end of its row A fills its remaining lines with the first
pairs of row A + 1 (row B, the other accumulator bank), so rows shorter than the lines leave no
line idle. A short tail waits (no issue) until row B's bank is open, unless there is no row B
to pack with (the last row, or an empty row next: the cycle then issues fewer pairs); an empty
row passes in one cycle. The issue decision is a loop (it decides the next chunk offset and
entries left), so it cannot be pipelined: every input of it is a register (flags of the
entries left in row A, the prefetched counts of rows B and C = A + 2, the flags of the pairs
left in the current entry), and their next values compare against thresholds set once per
command. The cycle model of both walks is :func:`vitaccel.golden.vitcod.spmm_schedule`.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import CMD_FIELD_BITS, bank_depth, dense_op_layout, pair_layout, run_layout

__all__ = ["DenserWalk", "SparserPacker"]


class DenserWalk(wiring.Component):
    """``op``: the Denser engine's decision of this cycle (see :func:`.dense_op_layout`)."""

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "run": In(1), "params": In(run_layout(cfg)), "handoff": In(1),
            "op": Out(dense_op_layout(cfg)),
            "more": Out(1),                      # the engine has rows left
        })

    def elaborate(self, platform):
        m = Module()
        p, o, lay = self.params, self.op, dense_op_layout(self.cfg)
        row = Signal(lay["row"].shape)
        word = Signal(lay["word"].shape)
        gbase = Signal(lay["gbase"].shape)
        group = Signal(range(self.cfg.dense_groups_max + 1))
        chunk = Signal(lay["chunk"].shape)
        lead = Signal(range(3))                  # row - rows handed off
        m.d.comb += [o.row.eq(row), o.word.eq(word), o.gbase.eq(gbase), o.chunk.eq(chunk)]
        may = Signal()                           # the row's bank is open
        m.d.comb += may.eq(self.run & self.more & (lead != 2))
        m.d.sync += lead.eq(lead + o.leave - self.handoff)
        with m.If(o.leave):
            m.d.sync += self.more.eq(row + 1 < p.n)
        with m.If(may):
            with m.If(p.dgroups == 0):
                m.d.comb += o.leave.eq(1)
                m.d.sync += [row.eq(row + 1), word.eq(row + 1)]
            with m.Else():
                m.d.comb += o.op.eq(1)
                with m.If(chunk == p.f_last):
                    with m.If(group + 1 >= p.dgroups):
                        m.d.comb += o.leave.eq(1)
                        m.d.sync += [row.eq(row + 1), word.eq(row + 1), group.eq(0),
                                     chunk.eq(0), gbase.eq(0)]
                    with m.Else():
                        m.d.sync += [chunk.eq(0), group.eq(group + 1), word.eq(word + p.n),
                                     gbase.eq(gbase + p.ld)]
                with m.Else():
                    m.d.sync += chunk.eq(chunk + 1)
        with m.If(self.start):
            m.d.sync += [row.eq(0), word.eq(0), gbase.eq(0), group.eq(0), chunk.eq(0),
                         lead.eq(0), self.more.eq(1)]
        return m


class SparserPacker(wiring.Component):
    """``pairs[l]``: line ``l``'s pair of this cycle; ``go``: pairs are issued; ``leave``: the
    engine leaves row A (``row``); ``row_b``: row A + 1; ``bank_addr[b]``: the word of score
    bank ``b`` the pairs of this cycle read (the entries are row-ordered across the banks)."""

    def __init__(self, cfg):
        self.cfg = cfg
        NM, L = cfg.n_max, cfg.lines
        super().__init__({
            "start": In(1), "run": In(1), "params": In(run_layout(cfg)), "handoff": In(1),
            "first_counts": In(data.ArrayLayout(unsigned(CMD_FIELD_BITS), 3)),
            "cnt_rd": In(ReadPort.Signature(addr_width=ceil_log2(NM), shape=unsigned(16))),
            "pairs": Out(data.ArrayLayout(pair_layout(cfg), L)),
            "go": Out(1), "leave": Out(1),
            "row": Out(range(NM + 2)),
            "row_b": Out(range(NM + 3)),
            "bank_addr": Out(data.ArrayLayout(range(bank_depth(cfg) + 3), L)),
            "more": Out(1),                      # the engine has rows left
        })

    def elaborate(self, platform):
        m = Module()
        p, L, FM = self.params, self.cfg.lines, self.cfg.chunks_max
        f, s_win = p.f, p.s_win
        lead = Signal(range(3))                  # row - rows handed off
        # row A = row, B = row + 1 (row_b), C = row + 2; the count of row C + 1 is read
        # ahead from the row-count buffer at row_pf = row + 3
        row_pf = Signal(range(self.cfg.n_max + 5))
        c0 = Signal(range(FM))                   # chunk of the first pair
        pword = Signal(range(bank_depth(self.cfg) + 2))   # row-order position of the
        pbank = Signal(range(L))                 # current entry: score bank word and bank
        a_left = Signal(CMD_FIELD_BITS)          # entries of row A left (>= 0)
        a_many = Signal()                        # a_left >= 2
        a_last = Signal()                        # a_left == 1 (else row A is empty)
        cnt_b = Signal(CMD_FIELD_BITS)           # row counts of rows B and C
        cnt_c = Signal(CMD_FIELD_BITS)
        b_exists = Signal()                      # row B exists and holds entries
        # Flags of rem = f - c0 (pairs of the current entry left): a cycle within the entry
        # leaves rem' = f - w - c0 (fits' <=> c0 >= f - 2w), one that ends it and goes on into
        # the next entry rem' = 2f - w - c0 (fits' <=> c0 >= 2f - 2w), the short last entry
        # of a row without a row B rem' = f.
        fits = Signal()                          # a full window reaches the end of the entry
        short = Signal()                         # ... and then some: the entry ends short of it
        thr_step = Signal(signed(len(f) + 3))
        thr_wrap = Signal(signed(len(f) + 3))
        full_fits = Signal()                     # f <= w: a whole entry fits a window
        full_short = Signal()                    # f < w

        may = Signal()                           # row A may be worked on (bank open)
        b_open = Signal()                        # row B may be worked on
        m.d.comb += [may.eq(self.run & self.more & (lead != 2)), b_open.eq(lead == 0)]
        rem = Signal(range(FM + 1))
        n_a = Signal(range(L + 1))               # pairs of row A this cycle
        n_ab = Signal(range(L + 1))              # pairs of rows A and B this cycle
        a_tail = Signal()                        # the last entry of row A ends short, no row B
        c0_wrap = Signal(range(FM))              # c0 after a cycle that ends the entry
        end_a = Signal()                         # this cycle's pairs reach the end of row A
        step = Signal()                          # this cycle's pairs reach the end of the entry
        m.d.comb += [
            rem.eq(f - c0),
            n_a.eq(Mux(a_many | ~short, s_win, rem)),
            end_a.eq(a_last & fits),
            a_tail.eq(a_last & short & ~b_exists),
            # a short tail of row A waits for row B's bank rather than idling lines, unless
            # there is no row B to pack with
            self.go.eq(may & (a_many | a_last) & (a_many | ~short | ~b_exists | b_open)),
            n_ab.eq(Mux(a_tail, rem, s_win)),
            c0_wrap.eq(Mux(a_tail, 0, s_win - rem)),
            step.eq(self.go & fits),
            self.leave.eq(may & (~(a_many | a_last) | (self.go & end_a))),
        ]
        pbank_next = Mux(pbank == L - 1, 0, pbank + 1)
        for ln in range(L):
            pair = self.pairs[ln]
            slot = Signal(range(2 * L + 1), name=f"l{ln}_slot")
            k = Signal(range(FM + 2 * L + 1), name=f"l{ln}_k")
            m.d.comb += [
                slot.eq(ln - p.ld), k.eq(c0 + slot),
                pair.v.eq(~p.dense_lines[ln] & self.go & (slot < n_ab)),
                pair.chunk.eq(Mux(k >= f, k - f, k)),
                pair.b.eq(slot >= n_a),
                pair.score_bank.eq(Mux(k >= f, pbank_next, pbank)),
                pair.acc_bank.eq(self.row[0] ^ pair.b),
            ]
        for b in range(L):
            m.d.comb += self.bank_addr[b].eq(pword + (b < pbank))
        m.d.comb += self.cnt_rd.addr.eq(row_pf)

        m.d.sync += lead.eq(lead + self.leave - self.handoff)
        with m.If(self.leave):
            # row B becomes row A (its count is a_left from now on: a row ends with a_left 0
            # or on its last entry), row C row B; the next count is read ahead
            m.d.sync += [self.row.eq(self.row + 1), self.more.eq(self.row_b < p.n),
                         self.row_b.eq(self.row_b + 1), row_pf.eq(row_pf + 1),
                         a_left.eq(cnt_b), a_many.eq(cnt_b >= 2), a_last.eq(cnt_b == 1),
                         cnt_b.eq(cnt_c), cnt_c.eq(self.cnt_rd.data),
                         b_exists.eq((self.row + 2 < p.n) & (cnt_c != 0))]
        with m.Elif(step):
            m.d.sync += [a_left.eq(a_left - 1), a_many.eq(a_left >= 3), a_last.eq(a_left == 2)]
        with m.If(self.go):
            with m.If(fits):
                m.d.sync += [c0.eq(c0_wrap),
                             fits.eq(Mux(a_tail, full_fits, c0 >= thr_wrap)),
                             short.eq(Mux(a_tail, full_short, c0 > thr_wrap))]
                with m.If(pbank == L - 1):
                    m.d.sync += [pbank.eq(0), pword.eq(pword + 1)]
                with m.Else():
                    m.d.sync += pbank.eq(pbank + 1)
            with m.Else():
                m.d.sync += [c0.eq(c0 + s_win), fits.eq(c0 >= thr_step), short.eq(c0 > thr_step)]

        with m.If(self.start):
            first = self.first_counts
            m.d.sync += [self.row.eq(0), self.row_b.eq(1), row_pf.eq(3), c0.eq(0),
                         fits.eq(f <= s_win), short.eq(f < s_win),
                         full_fits.eq(f <= s_win), full_short.eq(f < s_win),
                         thr_step.eq(f - 2 * s_win), thr_wrap.eq(2 * f - 2 * s_win),
                         pword.eq(0), pbank.eq(0),
                         a_left.eq(first[0]), a_many.eq(first[0] >= 2), a_last.eq(first[0] == 1),
                         cnt_b.eq(first[1]), cnt_c.eq(first[2]),
                         b_exists.eq((p.n > 1) & (first[1] != 0)),
                         lead.eq(0), self.more.eq(1)]
        return m
