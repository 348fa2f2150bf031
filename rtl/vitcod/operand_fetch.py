"""One PE line's operand fetch: from the issue of a cycle to the operands of its MAC line.

Phase 1 (SDDMM, :attr:`OperandFetch.SDDMM_LATENCY` cycles): the issue reads the line's index
ports (a Denser line its global key, a Sparser line its CSC entry and the entry's row-order
position); stage 1 forms the Q and K addresses (the query row and the key column) and registers
them, so that the index read and the buffers' address decode are not one path; stage 1b reads Q
and K. The score's sideband travels beside them: in range (a Denser line's validity bit, a
Sparser line's entry within ``nnz``), first/last chunk, position, column, row. Q is read from
the Denser engine's Q buffer by every line (**Q forwarding**: each line has its own read port,
so Q is loaded once, G = 0 included).

Phase 2 (SOFTMAX, :attr:`OperandFetch.SPMM_LATENCY` cycles): the issue reads the score buffers
(answering in :attr:`BankedMemory.LATENCY` = 2 cycles, from the block RAMs' output registers)
and both engines' row maxima of the line's row; stage 1 selects the maxima (a Denser line: the
Denser engine's row; a Sparser line: row A or row B), stage 1r the line's score (a lane of the
dense word, or the line's pair's score bank), stage 2a forms ``x = max(maxima) - t`` and the exp
LUT's address and the V address, stage 2b registers the LUT value and the rest of the shift
while V is read. The exp LUT holds ``(EXP_LUT[f] << 1) >> s`` for the two low bits ``s`` of the
shift, at address ``s * 2**T_FRAC + f`` (one block RAM), so that the MAC line shifts by
multiples of four only. Every stage boundary sits behind a block RAM output or in front of one,
so no path holds two memories' worth of delay.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import E_BITS, EXP_LUT, T_BITS, T_FRAC
from vitaccel.rtl.common.delay import delay

from .layouts import (bank_layout, col_bits, dense_op_layout, entry_pos_layout, entry_rc_layout,
                      glob_depth, lane_layout, line_tag_layout, pair_layout, qkv_addr, qkv_depth,
                      row_max_layout, run_layout, score_tag_layout, sddmm_issue_layout)

__all__ = ["OperandFetch", "EXP_LUT_SHIFTED"]

#: The exp LUT of every line: ``(EXP_LUT[f] << 1) >> s`` at ``s * 2**T_FRAC + f``, s = 0..3.
EXP_LUT_SHIFTED = [(int(v) << 1) >> s for s in range(4) for v in EXP_LUT]


class OperandFetch(wiring.Component):
    """Line ``line``'s front end. Inputs in the issue cycle: ``sddmm`` (phase 1), ``dense_op``
    and ``pair`` (phase 2); the shared read data one cycle later (``dv``, ``max_*``) and two
    cycles later (``dense_lane``, ``banks``). Outputs, :attr:`SDDMM_LATENCY` or
    :attr:`SPMM_LATENCY` cycles after the issue: ``q``/``k`` and ``score`` (phase 1), ``lut``,
    ``hi``, ``eok``, ``v`` and ``pair_tag`` (phase 2)."""

    #: Issue -> stage 1 -> stage 1b -> stage 2 (Q and K read in stage 1b)
    SDDMM_LATENCY = 3
    #: Issue -> stage 1 -> stage 1r -> stage 2a -> stage 2b -> stage 2
    SPMM_LATENCY = 5

    def __init__(self, cfg, line: int):
        self.cfg, self.line = cfg, line
        L, P, CB = cfg.lines, cfg.macs_per_line, col_bits(cfg)

        def rd(depth, shape):
            return In(ReadPort.Signature(addr_width=ceil_log2(depth), shape=shape))

        super().__init__({
            "spmm": In(1), "params": In(run_layout(cfg)),
            "sddmm": In(sddmm_issue_layout(cfg)),
            "dense_op": In(dense_op_layout(cfg)),
            "pair": In(pair_layout(cfg)),
            "glob_rd": rd(glob_depth(cfg), unsigned(CB)),
            "ent_rd": rd(cfg.nnz_max, entry_rc_layout(cfg)),
            "pos_rd": rd(cfg.nnz_max, entry_pos_layout()),
            "q_rd": rd(qkv_depth(cfg), unsigned(8 * P)),
            "k_rd": rd(qkv_depth(cfg), unsigned(8 * P)),
            "v_rd": rd(qkv_depth(cfg), unsigned(8 * P)),
            "dv": In(1),
            "max_d": In(row_max_layout()), "max_a": In(row_max_layout()),
            "max_b": In(row_max_layout()),
            "dense_lane": In(lane_layout()),
            "banks": In(data.ArrayLayout(bank_layout(cfg), L)),
            "score": Out(score_tag_layout(cfg)),
            "q": Out(8 * P), "k": Out(8 * P), "v": Out(8 * P),
            "lut": Out(E_BITS + 2), "hi": Out(range(8)), "eok": Out(1),
            "pair_tag": Out(line_tag_layout(cfg)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        ln = self.line
        m.submodules.exp_lut = lut = Memory(shape=unsigned(E_BITS + 2),
                                            depth=len(EXP_LUT_SHIFTED), init=EXP_LUT_SHIFTED)
        lut_rd = lut.read_port()
        dense = self.params.dense_lines[ln]
        iss, op = self.sddmm, self.dense_op
        m.d.comb += [
            self.glob_rd.addr.eq(Mux(self.spmm, op.gbase, iss.d_gbase) + ln),
            self.ent_rd.addr.eq(iss.s_kbase + ln - self.params.ld),
            self.pos_rd.addr.eq(iss.s_kbase + ln - self.params.ld),
            self.q.eq(self.q_rd.data), self.k.eq(self.k_rd.data), self.v.eq(self.v_rd.data),
        ]
        s1_dactive, busy = self._sddmm(m, dense)
        self._spmm(m, dense, lut_rd, s1_dactive)
        m.d.comb += self.busy.eq(busy)
        return m

    def _sddmm(self, m, dense):
        """Phase 1: stage 1 (Q/K addresses), stage 1b (Q/K read), the score's sideband.
        Returns stage 1's "the line's global key is in range" (phase 2 uses it too) and "a
        score is on its way"."""
        ln, p, iss = self.line, self.params, self.sddmm
        s1_v, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_chunk = Signal(range(self.cfg.chunks_max + 1))
        s1_dactive = Signal()                             # global key gbase + ln < G
        s1_sactive = Signal()                             # entry kbase + ln - ld < nnz
        s1_drow = Signal(range(self.cfg.n_max + 1))
        m.d.sync += s1_drow.eq(iss.d_row)
        with m.If(~self.spmm):
            m.d.sync += [
                s1_v.eq(Mux(dense, iss.d, iss.s)),
                s1_chunk.eq(Mux(dense, iss.d_chunk, iss.s_chunk)),
                s1_first.eq(Mux(dense, iss.d_chunk == 0, iss.s_chunk == 0)),
                s1_last.eq(Mux(dense, iss.d_chunk == p.f_last, iss.s_chunk == p.f_last)),
                s1_dactive.eq(iss.d_gbase + ln < p.g),
                s1_sactive.eq(iss.s_kbase + ln - p.ld < p.nnz),
            ]
        with m.Else():
            m.d.sync += [s1_v.eq(0), s1_dactive.eq(self.dense_op.gbase + ln < p.g)]
        ent = self.ent_rd.data
        row1 = Signal(col_bits(self.cfg))
        col1 = Signal(col_bits(self.cfg))
        m.d.comb += [row1.eq(Mux(dense, s1_drow, ent.row)),
                     col1.eq(Mux(dense, self.glob_rd.data, ent.col))]
        q_addr = Signal.like(self.q_rd.addr, name="s1b_qaddr")
        k_addr = Signal.like(self.k_rd.addr, name="s1b_kaddr")
        m.d.sync += [q_addr.eq(qkv_addr(self.cfg, row1, s1_chunk)),
                     k_addr.eq(qkv_addr(self.cfg, col1, s1_chunk))]
        m.d.comb += [self.q_rd.addr.eq(q_addr), self.k_rd.addr.eq(k_addr)]
        s1b = Signal(score_tag_layout(self.cfg), name="s1b")
        m.d.sync += [
            s1b.v.eq(s1_v),
            s1b.ok.eq(Mux(dense, s1_dactive & self.dv, s1_sactive)),
            s1b.first.eq(s1_first), s1b.last.eq(s1_last),
            s1b.pos.eq(self.pos_rd.data), s1b.col.eq(ent.col),
            s1b.row.eq(Mux(dense, s1_drow, ent.row)),
        ]
        m.d.comb += self.score.eq(delay(m, s1b, 1, name="s2_score"))
        return s1_dactive, s1_v | s1b.v | self.score.v

    def _spmm(self, m, dense, lut_rd, s1_dactive):
        """Phase 2: the line's score and row maxima -> x = m - t -> LUT and V reads."""
        pair, op = self.pair, self.dense_op
        # stage 1: the pair, the dense op, the selected row maxima
        s1_pair = Signal(line_tag_layout(self.cfg), name="s1_pair")
        s1_b = Signal()
        s1_bank = Signal(range(self.cfg.lines))
        s1_d = Signal()
        s1_dchunk = Signal(range(self.cfg.chunks_max + 1))
        m.d.sync += [s1_pair.v.eq(pair.v & self.spmm), s1_pair.chunk.eq(pair.chunk),
                     s1_pair.bank.eq(pair.acc_bank), s1_b.eq(pair.b),
                     s1_bank.eq(pair.score_bank), s1_d.eq(op.op & self.spmm),
                     s1_dchunk.eq(op.chunk)]
        md = Signal(signed(T_BITS))
        ms = Signal(signed(T_BITS))
        m.d.comb += [md.eq(Mux(dense, self.max_d.dense,
                               Mux(s1_b, self.max_b.dense, self.max_a.dense))),
                     ms.eq(Mux(dense, self.max_d.sparse,
                               Mux(s1_b, self.max_b.sparse, self.max_a.sparse)))]
        # stage 1r: the score buffers answer
        s1r_pair = delay(m, s1_pair, 1, name="s1r_pair")
        s1r_bank = delay(m, s1_bank, 1, name="s1r_bank")
        s1r_dactive = delay(m, s1_dactive, 1, name="s1r_dactive")
        s1r_gcol = delay(m, self.glob_rd.data, 1, name="s1r_gcol")
        s1r_d = delay(m, s1_d, 1, name="s1r_d")
        s1r_dchunk = delay(m, s1_dchunk, 1, name="s1r_dchunk")
        s1r_md = delay(m, md, 1, name="s1r_md")
        s1r_ms = delay(m, ms, 1, name="s1r_ms")
        bank_lane = Signal(bank_layout(self.cfg))
        with m.Switch(s1r_bank):
            for b in range(self.cfg.lines):
                with m.Case(b):
                    m.d.comb += bank_lane.eq(self.banks[b])
        lane = self.dense_lane
        s2a_md, s2a_ms, s2a_t = (Signal(signed(T_BITS), name=f"s2a_{x}")
                                 for x in ("md", "ms", "t"))
        s2a_ok = Signal()
        s2a_col = Signal(col_bits(self.cfg))
        s2a_chunk = Signal(range(self.cfg.chunks_max))
        m.d.sync += [
            s2a_md.eq(s1r_md), s2a_ms.eq(s1r_ms),
            s2a_t.eq(Mux(dense, lane.t, bank_lane.t)),
            s2a_ok.eq(Mux(dense, lane.ok & s1r_dactive & s1r_d, s1r_pair.v)),
            s2a_col.eq(Mux(dense, s1r_gcol, bank_lane.col)),
            s2a_chunk.eq(Mux(dense, s1r_dchunk, s1r_pair.chunk)),
        ]
        # stage 2a: x = m - t -> exp LUT address (fraction and the shift's two low bits)
        x = Signal(signed(T_BITS + 1))
        m_line = Mux(s2a_md > s2a_ms, s2a_md, s2a_ms)
        s2b_vaddr = Signal.like(self.v_rd.addr, name="s2b_vaddr")
        m.d.comb += [x.eq(m_line - s2a_t), lut_rd.addr.eq(x[:T_FRAC + 2]),
                     self.v_rd.addr.eq(s2b_vaddr)]
        xi = x >> T_FRAC
        s2b_hi = Signal(range(8))                          # min(xi, 31) >> 2
        s2b_ok = Signal()
        m.d.sync += [s2b_hi.eq(Mux(xi > 31, 7, xi >> 2)), s2b_ok.eq(s2a_ok),
                     s2b_vaddr.eq(qkv_addr(self.cfg, s2a_col, s2a_chunk))]
        # stage 2b: the LUT's output meets a register only (V is read meanwhile)
        m.d.sync += [self.lut.eq(lut_rd.data), self.hi.eq(s2b_hi), self.eok.eq(s2b_ok)]
        m.d.comb += self.pair_tag.eq(delay(m, s1r_pair, 3, name="pair"))
