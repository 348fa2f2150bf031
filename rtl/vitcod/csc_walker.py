"""LOAD: the ``index`` stream into the index buffers, the CSC expanded into (row, column) pairs.

The stream carries the compiled mask in sections: ``glob_idx[G]``, ``sparse_cols[N-G]``,
``col_ptr[N-G+1]``, one word per CSC entry (``row_idx`` and the entry's row-order position,
see :func:`~.layouts.entry_word`), ``row_cnt[N]``. Each section goes to its buffer at the
word's index within the section. While the entries stream in, the walker follows ``col_ptr``:
the entry at index ``i`` belongs to sparse column ``c`` once ``i < col_ptr[c + 1]``, so every
entry is written with its column (``sparse_cols[c]``) and SDDMM can read (row, column) pairs
directly. A column boundary stalls the stream for one cycle (an empty column costs one cycle).

Every decision in the stream's accept path comes from a register, because the stream's
``ready`` reaches back through the host link: the section's last index and emptiness are
registered when the section begins, ``col_ptr[c + 1]`` is kept in ``col_end`` (taken from the
stream for column 0, then read ahead from the buffer), and ``index >= col_end`` in ``col_due``.

Checks (sticky until ``start``): ``csc_error`` for a malformed CSC (``col_ptr[0] != 0``,
non-monotone ``col_ptr``, ``col_ptr[-1] != nnz``, entries past the last column);
``range_error`` for an index out of range (a row or column >= N, a bank or word outside the
score banks). ``count_mismatch`` says that the row counts do not sum to ``nnz`` (the core
checks it once the whole command has loaded). The row counts' section also clears the row
maxima (``clear``, one row per cycle, registered) and keeps the first three counts for the start
of the SpMM walk (``first_counts``, zero past N).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import (CMD_FIELD_BITS, bank_depth, col_bits, entry_pos_layout, entry_rc_layout,
                      glob_depth, run_layout)

__all__ = ["CSCWalker", "SECTIONS"]

#: The index stream's sections, in order (``DONE``: the whole stream is in).
SECTIONS = ("GLOB", "SCOL", "CPTR", "ENTRY", "CNT", "DONE")
SEC_GLOB, SEC_SCOL, SEC_CPTR, SEC_ENTRY, SEC_CNT, SEC_DONE = range(len(SECTIONS))


class CSCWalker(wiring.Component):
    """``index`` -> the glob, sparse-column, col_ptr, entry, position and row-count buffers."""

    def __init__(self, cfg):
        self.cfg = cfg
        NM, CB = cfg.n_max, col_bits(cfg)
        aw = ceil_log2

        def wr(depth, shape):
            return In(WritePort.Signature(addr_width=aw(depth), shape=shape))

        super().__init__({
            "start": In(1), "load": In(1), "run": In(run_layout(cfg)),
            "index": In(stream.Signature(unsigned(32))),
            "glob_wr": wr(glob_depth(cfg), unsigned(CB)),
            "scol_wr": wr(NM, unsigned(CB)),
            "scol_rd": In(ReadPort.Signature(addr_width=aw(NM), shape=unsigned(CB))),
            "cptr_wr": wr(NM + 1, unsigned(16)),
            "cptr_rd": In(ReadPort.Signature(addr_width=aw(NM + 1), shape=unsigned(16))),
            "ent_wr": wr(cfg.nnz_max, entry_rc_layout(cfg)),
            "pos_wr": wr(cfg.nnz_max, entry_pos_layout()),
            "cnt_wr": wr(NM, unsigned(16)),
            "done": Out(1),
            "csc_error": Out(1), "range_error": Out(1), "count_mismatch": Out(1),
            "first_counts": Out(data.ArrayLayout(unsigned(CMD_FIELD_BITS), 3)),
            "clear": Out(data.StructLayout({"v": 1, "row": unsigned(CB)})),
        })

    def elaborate(self, platform):
        m = Module()
        run, word = self.run, self.index.payload
        sec = Signal(range(len(SECTIONS)))
        sec_i = Signal(16)                  # word within the section
        sec_last = Signal(17)               # the section's last word index (length - 1)
        sec_empty = Signal()
        sec_open = Signal()                 # sec != SEC_DONE and not empty: may take words
        in_entry = Signal()                 # sec == SEC_ENTRY
        cptr_prev = Signal(16)
        walk_col = Signal(range(self.cfg.n_max + 1))   # the walker's sparse column
        walk_more = Signal()                # walk_col + 1 < ncols
        col_end = Signal(16)                # col_ptr[walk_col + 1]
        col_due = Signal()                  # sec_i >= col_end, exact in the entry section
        cnt_sum = Signal(range(self.cfg.nnz_max * 2 + self.cfg.n_max * 65536))
        clear = Signal()                    # a row count is taken: clear that row's maxima
        m.d.sync += [self.clear.v.eq(clear), self.clear.row.eq(sec_i)]
        m.d.comb += [self.done.eq(sec == SEC_DONE), self.count_mismatch.eq(cnt_sum != run.nnz)]

        wr_ports = (self.glob_wr, self.scol_wr, self.cptr_wr, self.cnt_wr, self.ent_wr,
                    self.pos_wr)
        m.d.comb += [port.addr.eq(sec_i) for port in wr_ports]
        m.d.comb += [
            self.glob_wr.data.eq(word), self.scol_wr.data.eq(word), self.cptr_wr.data.eq(word),
            self.cnt_wr.data.eq(word),
            self.ent_wr.data.row.eq(word[:8]), self.ent_wr.data.col.eq(self.scol_rd.data),
            self.pos_wr.data.word.eq(word[8:24]), self.pos_wr.data.bank.eq(word[24:32]),
            self.cptr_rd.addr.eq(walk_col + 2),
            self.scol_rd.addr.eq(walk_col),
        ]

        next_len = Signal(17)               # length of the next section
        with m.Switch(sec):
            with m.Case(SEC_GLOB):
                m.d.comb += next_len.eq(run.ncols)
            with m.Case(SEC_SCOL):
                m.d.comb += next_len.eq(run.ncols + 1)
            with m.Case(SEC_CPTR):
                m.d.comb += next_len.eq(run.nnz)
            with m.Case(SEC_ENTRY):
                m.d.comb += next_len.eq(run.n)
        # col_end as it is after this cycle when a section ends (col_ptr[1] may be the last
        # col_ptr word): the entry section starts at sec_i = 0
        col_end_now = Mux((sec == SEC_CPTR) & (sec_i == 1), word, col_end)
        next_section = [sec.eq(sec + 1), sec_i.eq(0), sec_last.eq(next_len - 1),
                        col_due.eq(col_end_now == 0),
                        sec_empty.eq((next_len == 0) & (sec != SEC_CNT)),  # SEC_DONE: not empty
                        sec_open.eq((next_len != 0) & (sec != SEC_CNT)),
                        in_entry.eq(sec == SEC_CPTR)]
        at_last = Signal()
        m.d.comb += at_last.eq(sec_i == sec_last)
        walk_step = Signal()                # the entry at sec_i is past walk_col's end
        m.d.comb += walk_step.eq(in_entry & col_due & walk_more)
        accept = Signal()
        m.d.comb += [self.index.ready.eq(self.load & sec_open & ~walk_step),
                     accept.eq(self.index.valid & self.index.ready)]
        with m.If(self.load & sec_empty):
            m.d.sync += next_section
        with m.If(self.load & walk_step):
            m.d.sync += [walk_col.eq(walk_col + 1), col_end.eq(self.cptr_rd.data),
                         col_due.eq(sec_i >= self.cptr_rd.data),
                         walk_more.eq(walk_col + 2 < run.ncols)]
        with m.If(accept):
            with m.Switch(sec):
                with m.Case(SEC_GLOB):
                    m.d.comb += self.glob_wr.en.eq(1)
                    with m.If(word >= run.n):
                        m.d.sync += self.range_error.eq(1)
                with m.Case(SEC_SCOL):
                    m.d.comb += self.scol_wr.en.eq(1)
                    with m.If(word >= run.n):
                        m.d.sync += self.range_error.eq(1)
                with m.Case(SEC_CPTR):
                    m.d.comb += self.cptr_wr.en.eq(1)
                    m.d.sync += cptr_prev.eq(word)
                    with m.If(sec_i == 1):
                        m.d.sync += col_end.eq(word)
                    with m.If(((sec_i == 0) & (word != 0)) | ((sec_i != 0) & (word < cptr_prev))
                              | (at_last & (word != run.nnz)) | (word >> 16 != 0)):
                        m.d.sync += self.csc_error.eq(1)
                with m.Case(SEC_ENTRY):
                    m.d.comb += [self.ent_wr.en.eq(1), self.pos_wr.en.eq(1)]
                    pos_word, pos_bank = word[8:24], word[24:32]
                    # An entry past the last column raises ERR_CSC only, even when it is out
                    # of range too: the unsplit core's one error register let the later of the
                    # two updates win, and this split keeps its behaviour.
                    with m.If(col_due):                      # ran past the last column
                        m.d.sync += self.csc_error.eq(1)
                    with m.Elif((word[:8] >= run.n) | (pos_bank >= self.cfg.lines)
                                | (pos_word >= bank_depth(self.cfg))
                                | (pos_word * self.cfg.lines + pos_bank >= run.nnz)):
                        m.d.sync += self.range_error.eq(1)
                with m.Case(SEC_CNT):
                    m.d.comb += [self.cnt_wr.en.eq(1), clear.eq(1)]
                    m.d.sync += cnt_sum.eq(cnt_sum + word)
                    for i in range(3):
                        with m.If(sec_i == i):
                            m.d.sync += self.first_counts[i].eq(word)
            with m.If(at_last):
                m.d.sync += next_section
            with m.Else():
                # col_end does not move on an accept inside the entry section
                m.d.sync += [sec_i.eq(sec_i + 1), col_due.eq(sec_i + 1 >= col_end)]

        with m.If(self.start):
            m.d.sync += [
                sec.eq(SEC_GLOB), sec_i.eq(0), sec_last.eq(run.g - 1),
                sec_empty.eq(run.g == 0), sec_open.eq(run.g != 0), in_entry.eq(0),
                walk_col.eq(0), walk_more.eq(run.ncols > 1), cnt_sum.eq(0), cptr_prev.eq(0),
                col_end.eq(0), col_due.eq(1), self.csc_error.eq(0), self.range_error.eq(0),
                *[c.eq(0) for c in self.first_counts],
            ]
        return m
