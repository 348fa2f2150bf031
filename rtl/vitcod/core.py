"""ViTCoD attention core: a Denser and a Sparser engine on shared PE lines, one head per command.

Golden twin: :func:`vitaccel.golden.vitcod.attention_int_compiled`, bit for bit.

Structure
---------
``lines`` PE lines of ``macs`` int8 MACs each. Per command (one head) the line split is set at
run time: lines ``[0, lines_d)`` form the **Denser engine**, lines ``[lines_d, lines)`` the
**Sparser engine**; both engines work concurrently in every phase. N, G, nnz, d (as ``chunks`` =
ceil(d / macs) words per row) are run-time values bounded by the constructor's maxima.

Phases (one command):

1. LOAD. ``q``, ``k``, ``v`` rows (``chunks`` beats of ``macs`` int8 lanes per row, lanes past d
   zero) fill the Q, K and V buffers. ``index`` (32-bit words) carries the compiled mask in
   sections: ``glob_idx[G]``, ``sparse_cols[N-G]``, ``col_ptr[N-G+1]``, one word per CSC
   entry (``row_idx`` and the entry's row-order position, see :func:`entry_word`),
   ``row_cnt[N]``. The **CSC walker** runs while the entries stream in: it follows
   ``col_ptr`` (stalling the stream one cycle per column boundary, so empty columns cost one
   cycle) and expands the CSC into the index buffer of (row, column) pairs. The position is
   the compiler's row-order permutation, as (word, bank) of the row-ordered score buffer. The
   ``dense_valid`` stream carries the N x G validity bitmap in the Denser engine's word order
   (one ``lines``-bit word per (group, query)).
2. SDDMM. Denser engine, **K-stationary**: lines hold global keys ``glob[gb*lines_d + l]`` while
   all N queries stream past; Q is broadcast from the Q buffer. Sparser engine: each line takes
   one CSC entry per group (``lines_s`` consecutive entries, so a column's key stays on the
   lines for as long as its entries last) and reads its Q row from the Denser engine's Q buffer
   through its own read port (**Q forwarding**; Q is never loaded twice, G = 0 included). Every
   line reduces a d-wide dot product over ``chunks`` cycles, requantises it into the log2
   domain (``t``) and writes it: dense scores to the dense score buffer (one ``lines``-lane word
   per (group, query), with the validity bit), sparse scores to ``lines`` score banks at the
   entry's row-order position (one write per cycle, so a group takes ``max(chunks, lines_s)``
   cycles).
   Each engine also keeps its **row maxima** (a max tree over the dense lanes, then a
   read-modify-write of the dense row-max buffer; the sparse writer does the same for the
   sparse row-max buffer), so the softmax phase needs no extra pass over the scores.
3. SOFTMAX + SpMM, **output-stationary**, row by row, the two engines **decoupled**: each
   walks the rows at its own pace and adds into the accumulator bank of its own row (two
   banks, row x uses bank x % 2), so an engine may be at most one row ahead of the oldest row
   not yet handed to the normalisers. ``m = max(m_dense, m_sparse)`` of the op's row (the
   Denser engine's row and the Sparser engine's rows A and B are read each cycle);
   ``e = exp2(m - t)`` on every line (LUT + shift); the lines switch to SpMM mode and multiply
   ``e`` by their V chunk. Denser engine: ``chunks`` cycles per key group of ``lines_d``
   global keys, ``ceil(G / lines_d)`` groups per row (G = 0: a row passes in one cycle with no
   op); an adder tree over its lines sums into the row's chunk, and ``e`` into ``l``.
   Sparser engine, **packed**: the row-ordered entries are a stream of (entry, chunk) pairs,
   ``w = min(lines_s, chunks)`` consecutive pairs per cycle, one per line; the pairs of one
   cycle have distinct chunks, so no tree is needed: each chunk of the accumulator takes the
   products of the one line that holds it (a line-to-chunk crossbar), and the line holding
   chunk 0 brings its entry's ``e`` into ``l`` (every product and every ``e`` is added exactly
   once, so the integer sums are those of the golden model, bit for bit). The stream runs on
   across row boundaries: a cycle that reaches the end of its row A fills its remaining lines
   with the first pairs of row A + 1 (row B, the other bank), so rows shorter than the lines
   leave no line idle. A short tail waits (no issue) until row B's bank is free, unless there
   is no row B to pack with (last row, or an empty row next: then the cycle issues fewer
   pairs); an empty row passes in one cycle. A row is handed off once both engines' last ops for
   it have been added (a done bit per bank and engine, set 9 cycles after the engine's last
   issue for the row); the hand-off copies and clears the bank and opens it for row x + 2.
   The cycle model of this schedule is ``spmm_schedule`` in ``tests/test_vitcod_rtl.py``.
   The issue decisions of both engines come from registers only (the Sparser engine keeps
   the entries left in its row and prefetches the counts of the next two rows).
4. NORMALISE (overlapped with the next rows): ``l = l_dense + l_sparse`` and ``acc_dense +
   acc_sparse`` merged once into one of ``normalisers`` slots (round-robin), each with its own
   :class:`~vitaccel.rtl.common.divider.Reciprocal` (iterative, ~37 cycles); the slots feed, in
   row order, the product ``acc * r`` (three stages: the slot's chunk 0, as a slot shifts its row
   out one chunk per beat; partial products of
   17-bit pieces of ``acc``, their sum) and a
   :class:`~vitaccel.rtl.common.requant.Requantizer` to int8 on ``out`` (``chunks`` beats per
   row, one per cycle).

Line pipeline (per line; phase 1 = SDDMM, phase 2 = SpMM): issue (index, score and row-max
reads) -> stage 1 (phase 1: Q/K addresses; phase 2: both engines' row maxima selected; the
score buffers, :class:`~vitaccel.rtl.common.banked.BankedMemory`, answer one cycle later) ->
phase 1: stage 1b (Q/K read) | phase 2: stage 1r (the lane's t selected from the score
buffers' registered outputs) and stage 2a (``m`` = max of the maxima,
``x = m - t``, exp-LUT address from the fraction and the shift's two low bits, V address) and
stage 2b (LUT value registered; V read) -> stage 2 (operands: Q and K, or ``e``: the LUT value
shifted by the rest of ``x >> T_FRAC`` and rounded, and V) -> stage 3 (products) ->
stage 4 (lane tree / cross-line sums) -> stage 5 (accumulate). The stages are cut so that a
path holds about one block-RAM read, multiplier or wide adder plus a few LUT levels (ECP5
timing).

Errors (``error`` bits): ``ERR_BAD_CMD`` (sticky until reset) a command outside the configured
limits (index-buffer overflow included) is rejected without consuming data and the core returns
to idle, so it never hangs (a command is registered when taken and accepted or rejected three
cycles later, from registered products and checks of its fields); the content errors below are
per command (cleared when the next command is accepted): ``ERR_CSC`` malformed CSC
(``col_ptr[0] != 0``, non-monotone ``col_ptr``, ``col_ptr[-1] != nnz``, entries past the last
column); ``ERR_INDEX_RANGE`` an index out of range (row or column >= N, a bank/word outside the
score buffer, row counts not summing to nnz). Content errors do not stop the core: every loop
is bounded by the command's sizes, addresses are clamped, and the (meaningless) output is
produced.

Efficiency limits (measured in ``benchmarks/results/vitcod.md``): the Denser engine holds one
global key per line, so the host never gives it more lines than G
(:func:`vitaccel.golden.vitcod.line_split`); a partial last key group still idles lines.
Sparser engine, SDDMM: a group of ``lines_s`` entries takes ``max(chunks, lines_s)`` cycles
(one score-bank write per cycle) and issues in ``chunks`` of them, so only the last, partial
group idles lines (and with ``lines_s > chunks`` the engine waits ``lines_s - chunks`` cycles
per group, not counted as issue cycles; never with 8 lines x 8 MACs at d = 64). SpMM: packed,
it idles lines only in the cycle before an empty row and in the very last cycle; with
``lines_s > chunks`` (small d) it uses only ``chunks`` lines per cycle. Time, not issue
efficiency: with two accumulator banks the engines can drift apart by one row only, so a row
much longer for one engine (the CLS row: ~200 sparse entries) stalls the other; more banks
would recover part of it (``spmm_schedule``, 36 DeiT-Tiny heads, 8 x 8: SpMM 136.7k cycles with 2
banks as the RTL, 133.7k with 3, 133.2k with 4, 126.4k unbounded; 133.3k with 2 before stage 1r
made the done bits 9 cycles, not 8), at 64 x 32-bit accumulators plus adders per bank.

Choices an FPGA engineer would make and the spec leaves open: exact row max (a read pass over
the stored scores, cheaper than recomputing SDDMM); the row-order permutation precomputed
offline (static mask) rather than read-modify-write scatter; K re-read from the line's K port
every cycle instead of a d-byte register copy (same loop order and bandwidth, no FFs); Q, K and
V have one read port per line (replicated block RAM), the price of independent sparse lines.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import ACC_BITS, E_BITS, EXP_LUT, RECIP_FRAC, T_BITS, T_FRAC
from vitaccel.rtl.common.banked import BankedMemory
from vitaccel.rtl.common.divider import Reciprocal
from vitaccel.rtl.common.requant import SHIFT_WIDTH, Requantizer, split_product

__all__ = ["VitCoDCore", "cmd_layout", "entry_word", "ERR_BAD_CMD", "ERR_CSC",
           "ERR_INDEX_RANGE"]

ERR_BAD_CMD = 1 << 0
ERR_CSC = 1 << 1
ERR_INDEX_RANGE = 1 << 2

#: Width of the fields of a command beat (wide enough to carry, and reject, oversized values).
CMD_FIELD_BITS = 16


def cmd_layout():
    """One command = one head: sizes, the line split and the group counts (checked in RTL)."""
    return data.StructLayout({
        "n": CMD_FIELD_BITS,             # tokens N (queries = keys)
        "chunks": CMD_FIELD_BITS,        # ceil(d / macs): words per Q/K/V row
        "g": CMD_FIELD_BITS,             # global (dense) columns G
        "nnz": CMD_FIELD_BITS,           # sparse non-zeros
        "lines_d": CMD_FIELD_BITS,       # lines of the Denser engine
        "dense_groups": CMD_FIELD_BITS,  # ceil(G / lines_d)
    })


def entry_word(row: int, pos: int, lines: int) -> int:
    """The ``index`` word of one CSC entry: its query row (bits 0-7) and its row-order position
    ``pos`` as word (bits 8-23) and bank (bits 24-31) of the ``lines`` score banks."""
    return row | ((pos // lines) << 8) | ((pos % lines) << 24)


def _ceil_div(a, b):
    return -(-a // b)


class VitCoDCore(wiring.Component):
    """ViTCoD Denser + Sparser engines (see the module docstring for the protocol).

    Parameters: ``lines`` (>= 2) PE lines of ``macs`` MACs; maxima ``n_max`` (<= 256),
    ``d_max``, ``g_max``, ``nnz_max`` (the CSC index buffer), ``dense_groups_max`` (the dense
    score buffer holds ``dense_groups_max * n_max`` words), ``normalisers`` (reciprocal slots
    working on consecutive rows in parallel).

    Ports: ``cmd``, ``q``, ``k``, ``v``, ``index``, ``dense_valid`` In streams; ``out`` Out
    stream of ``macs`` int8 lanes; plain inputs ``score_multiplier``/``score_shift`` and
    ``out_multiplier``/``out_shift`` (from :func:`vitaccel.golden.vitcod.score_requant` /
    :func:`~vitaccel.golden.vitcod.out_requant`); status outputs ``busy``, ``error``,
    ``cycles`` (command accepted to last output), ``sddmm_cycles``, ``spmm_cycles``,
    ``dense_busy``/``sparse_busy`` (cycles in which the engine issued work).
    """

    def __init__(self, lines=4, macs=4, n_max=32, d_max=16, g_max=8, nnz_max=256,
                 dense_groups_max=8, normalisers=3):
        for name, value, lo, hi in (("lines", lines, 2, 64), ("macs", macs, 1, 64),
                                    ("n_max", n_max, 1, 256), ("d_max", d_max, 1, 1024),
                                    ("g_max", g_max, 0, 256), ("nnz_max", nnz_max, 1, 65535),
                                    ("dense_groups_max", dense_groups_max, 1, 256),
                                    ("normalisers", normalisers, 1, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                self._MustUse__used = True
                raise ValueError(f"VitCoDCore.{name} must be an integer in [{lo}, {hi}], "
                                 f"got {value!r}")
        self.lines, self.macs = lines, macs
        self.n_max, self.d_max, self.g_max = n_max, d_max, max(g_max, 1)
        self.nnz_max, self.dense_groups_max = nnz_max, dense_groups_max
        self.normalisers = normalisers
        self.chunks_max = _ceil_div(d_max, macs)
        self.qkv_depth = n_max * self.chunks_max
        self.dense_depth = dense_groups_max * n_max
        self.bank_depth = _ceil_div(nnz_max, lines)
        self.col_bits = max(ceil_log2(n_max), 1)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout())),
            "q": In(stream.Signature(data.ArrayLayout(signed(8), macs))),
            "k": In(stream.Signature(data.ArrayLayout(signed(8), macs))),
            "v": In(stream.Signature(data.ArrayLayout(signed(8), macs))),
            "index": In(stream.Signature(unsigned(32))),
            "dense_valid": In(stream.Signature(unsigned(lines))),
            "out": Out(stream.Signature(data.ArrayLayout(signed(8), macs))),
            "score_multiplier": In(16),
            "score_shift": In(SHIFT_WIDTH),
            "out_multiplier": In(16),
            "out_shift": In(SHIFT_WIDTH),
            "busy": Out(1),
            "error": Out(3),
            "cycles": Out(32),
            "sddmm_cycles": Out(32),
            "spmm_cycles": Out(32),
            "dense_busy": Out(32),
            "sparse_busy": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        L, P, FM = self.lines, self.macs, self.chunks_max
        NM, CB = self.n_max, self.col_bits
        T_MIN = -(1 << (T_BITS - 1))

        # --- the command ---------------------------------------------------------------------
        n = Signal(range(NM + 1))
        f = Signal(range(FM + 1))
        g = Signal(range(NM + 1))
        nnz = Signal(range(self.nnz_max + 1))
        ld = Signal(range(L + 1))                      # lines of the Denser engine
        ls = Signal(range(L + 1))                      # lines of the Sparser engine
        dgroups = Signal(range(self.dense_groups_max + 1))
        s_period = Signal(range(max(FM, L) + 1))       # cycles per sparse SDDMM group
        ncols = Signal(range(NM + 1))                  # sparse columns N - G
        # the last chunk and row indices, registered with the command so that the loop ends
        # compare against a register, not through a subtraction
        f_last = Signal(range(FM))                     # chunks - 1
        n_last = Signal(range(NM))                     # n - 1
        # The command is registered when taken, its products one cycle later, the check
        # (cmd_ok) one more cycle later, and only then is it accepted: the check of the raw
        # stream payload (16 x 16 products, comparators) fanned out into the enables of every
        # command register in one cycle, a 17-18 ns path.
        cmd = Signal(cmd_layout())
        cmd_cover = Signal(2 * CMD_FIELD_BITS)         # dense_groups * lines_d
        cmd_dv_total = Signal(2 * CMD_FIELD_BITS)      # dense_groups * n: validity words
        cmd_out_total = Signal(2 * CMD_FIELD_BITS)     # n * chunks: output beats
        m.d.sync += [cmd_cover.eq(cmd.dense_groups * cmd.lines_d),
                     cmd_dv_total.eq(cmd.dense_groups * cmd.n),
                     cmd_out_total.eq(cmd.n * cmd.chunks)]
        cmd_ok = Signal()
        m.d.sync += cmd_ok.eq(
            (cmd.n >= 1) & (cmd.n <= NM) & (cmd.chunks >= 1) & (cmd.chunks <= FM)
            & (cmd.g <= cmd.n) & (cmd.g <= self.g_max) & (cmd.nnz <= self.nnz_max)
            & (cmd.lines_d <= L)
            # dense_groups == ceil(g / lines_d): cover >= g > (dense_groups - 1) * lines_d
            & Mux(cmd.g == 0, cmd.dense_groups == 0,
                  (cmd.lines_d >= 1) & (cmd.dense_groups <= self.dense_groups_max)
                  & (cmd_cover >= cmd.g) & (cmd_cover < cmd.g + cmd.lines_d))
            & ((cmd.nnz == 0) | (cmd.lines_d < L)))

        error = Signal(3)
        m.d.comb += self.error.eq(error)

        # --- buffers -------------------------------------------------------------------------
        def qkv_memory(name):
            mem = Memory(shape=unsigned(8 * P), depth=self.qkv_depth, init=[])
            m.submodules[name] = mem
            return mem, mem.write_port(), [mem.read_port() for _ in range(L)]

        q_mem, q_wr, q_rd = qkv_memory("q_buffer")
        k_mem, k_wr, k_rd = qkv_memory("k_buffer")
        v_mem, v_wr, v_rd = qkv_memory("v_buffer")

        m.submodules.glob_buffer = glob_mem = Memory(shape=unsigned(CB), depth=self.g_max, init=[])
        glob_wr = glob_mem.write_port()
        glob_rd = [glob_mem.read_port() for _ in range(L)]
        m.submodules.scol_buffer = scol_mem = Memory(shape=unsigned(CB), depth=NM, init=[])
        scol_wr = scol_mem.write_port()
        scol_rd = scol_mem.read_port(domain="comb")
        m.submodules.colptr_buffer = cptr_mem = Memory(
            shape=unsigned(16), depth=NM + 1, init=[])
        cptr_wr = cptr_mem.write_port()
        cptr_rd = cptr_mem.read_port(domain="comb")
        m.submodules.rowcnt_buffer = cnt_mem = Memory(shape=unsigned(16), depth=NM, init=[])
        cnt_wr = cnt_mem.write_port()
        cnt_rd = cnt_mem.read_port(domain="comb")
        # The CSC index buffer, expanded by the walker: (row, column) and row-order position.
        entry_rc_layout = data.StructLayout({"row": unsigned(CB), "col": unsigned(CB)})
        entry_pos_layout = data.StructLayout({"word": unsigned(16), "bank": unsigned(8)})
        m.submodules.entry_buffer = ent_mem = Memory(shape=entry_rc_layout, depth=self.nnz_max,
                                                     init=[])
        ent_wr = ent_mem.write_port()
        ent_rd = [ent_mem.read_port() for _ in range(L)]
        m.submodules.entry_pos_buffer = pos_mem = Memory(shape=entry_pos_layout,
                                                         depth=self.nnz_max, init=[])
        pos_wr = pos_mem.write_port()
        pos_rd = [pos_mem.read_port() for _ in range(L)]
        m.submodules.dense_valid_buffer = dv_mem = Memory(shape=unsigned(L),
                                                          depth=self.dense_depth, init=[])
        dv_wr = dv_mem.write_port()
        dv_rd = dv_mem.read_port()
        # Scores: dense words of L lanes {t, ok}; sparse banks of {t, col} in row order. They
        # answer in BankedMemory.LATENCY = 2 cycles, on the ECP5 from the block RAMs' own
        # output registers (0.96 ns clock-to-out): their bare outputs (5.8 ns) into the line's
        # bank mux and stage 2a were a 74.3 MHz ULX3S critical path. Phase 2 has a stage for
        # it (stage 1r). Their writes come from registers (the requantisers, the hold
        # registers' one-of-L mux), so nothing long reaches the blocks' write pins.
        lane_layout = data.StructLayout({"t": signed(T_BITS), "ok": 1})
        dense_word_layout = data.ArrayLayout(lane_layout, L)
        m.submodules.dense_scores = ds_mem = BankedMemory(
            dense_word_layout.size, self.dense_depth, ecp5_output_register=True)
        ds_wr, ds_rd = ds_mem.write, ds_mem.read
        ds_wdata = Signal(dense_word_layout)
        ds_rdata = dense_word_layout(ds_rd.data)
        m.d.comb += ds_wr.data.eq(ds_wdata)
        bank_layout = data.StructLayout({"t": signed(T_BITS), "col": unsigned(CB)})
        bank_wr, bank_rd, bank_wdata, bank_rdata = [], [], [], []
        for b in range(L):
            # one bank in one block-RAM depth (up to 2048 words: 9-bit blocks): no depth mux
            mem = BankedMemory(bank_layout.size, self.bank_depth,
                               bank_depth=max(512, 1 << ceil_log2(self.bank_depth)),
                               ecp5_output_register=True)
            m.submodules[f"score_bank{b}"] = mem
            wdata = Signal(bank_layout, name=f"score_bank{b}_wdata")
            m.d.comb += mem.write.data.eq(wdata)
            bank_wr.append(mem.write)
            bank_rd.append(mem.read)
            bank_wdata.append(wdata)
            bank_rdata.append(bank_layout(mem.read.data))
        # Row maxima of the scores, per engine, kept by read-modify-write during SDDMM (so the
        # softmax phase needs no extra pass over the scores); cleared while row_cnt loads.
        m.submodules.dense_row_max = md_mem = Memory(shape=signed(T_BITS), depth=NM, init=[])
        md_wr = md_mem.write_port()
        md_rd = md_mem.read_port(transparent_for=(md_wr,))
        m.submodules.sparse_row_max = ms_mem = Memory(shape=signed(T_BITS), depth=NM, init=[])
        ms_wr = ms_mem.write_port()
        ms_rd = ms_mem.read_port(transparent_for=(ms_wr,))
        # The exp LUT holds (EXP_LUT[f] << 1) >> s for the two low bits s of the shift, at
        # address s * 2**T_FRAC + f (1024 x 17 bits, one DP16KD): the fabric then shifts by
        # multiples of four only, an 8-way choice instead of a five-level barrel shifter, in
        # the stage that also rounds and fans e out to the line's multipliers (13.5 ns, the
        # 74.0 MHz ULX3S critical path). A shift of 32 or more leaves 0 either way.
        exp_lut_shifted = [(int(v) << 1) >> s for s in range(4) for v in EXP_LUT]
        lut_rd = []
        for ln in range(L):
            mem = Memory(shape=unsigned(E_BITS + 2), depth=len(exp_lut_shifted),
                         init=exp_lut_shifted)
            m.submodules[f"exp_lut{ln}"] = mem
            lut_rd.append(mem.read_port())

        # --- status counters -----------------------------------------------------------------
        cycles = Signal(32)
        sddmm_cycles = Signal(32)
        spmm_cycles = Signal(32)
        dense_busy = Signal(32)
        sparse_busy = Signal(32)
        m.d.comb += [self.cycles.eq(cycles), self.sddmm_cycles.eq(sddmm_cycles),
                     self.spmm_cycles.eq(spmm_cycles), self.dense_busy.eq(dense_busy),
                     self.sparse_busy.eq(sparse_busy)]

        # ======================================================================================
        # LOAD
        # ======================================================================================
        loading = Signal()

        def row_loader(name, port, wr):
            """Rows of ``f`` words at row * FM (stride FM, so no run-time multiplier)."""
            base = Signal(range(self.qkv_depth + FM + 1), name=f"{name}_base")
            chunk = Signal(range(FM + 1), name=f"{name}_chunk")
            row = Signal(range(NM + 1), name=f"{name}_row")
            done = Signal(name=f"{name}_done")
            m.d.comb += [wr.addr.eq(base + chunk), wr.data.eq(port.payload),
                         port.ready.eq(loading & ~done)]
            with m.If(port.valid & port.ready):
                m.d.comb += wr.en.eq(1)
                with m.If(chunk == f_last):
                    m.d.sync += [chunk.eq(0), base.eq(base + FM), row.eq(row + 1)]
                    with m.If(row == n_last):
                        m.d.sync += done.eq(1)
                with m.Else():
                    m.d.sync += chunk.eq(chunk + 1)
            return [base.eq(0), chunk.eq(0), row.eq(0), done.eq(0)], done

        q_reset, q_done = row_loader("q", self.q, q_wr)
        k_reset, k_done = row_loader("k", self.k, k_wr)
        v_reset, v_done = row_loader("v", self.v, v_wr)

        # dense validity bitmap: dgroups * n words
        dv_addr = Signal(range(self.dense_depth + 1))
        dv_done = Signal()
        m.d.comb += [dv_wr.addr.eq(dv_addr), dv_wr.data.eq(self.dense_valid.payload),
                     self.dense_valid.ready.eq(loading & ~dv_done)]
        dv_last = Signal(range(self.dense_depth + 1))   # dgroups * n - 1 (if not empty)
        with m.If(self.dense_valid.valid & self.dense_valid.ready):
            m.d.comb += dv_wr.en.eq(1)
            m.d.sync += dv_addr.eq(dv_addr + 1)
            with m.If(dv_addr == dv_last):
                m.d.sync += dv_done.eq(1)

        # index sections and the CSC walker
        SEC_GLOB, SEC_SCOL, SEC_CPTR, SEC_ENTRY, SEC_CNT, SEC_DONE = range(6)
        sec = Signal(range(6))
        sec_i = Signal(16)                  # word within the section
        # the section's last word index (length - 1) and emptiness, registered when the section
        # begins: the length mux, the subtraction and the compare in the stream's accept path
        # were a 13.5 ns path
        sec_last = Signal(17)
        sec_empty = Signal()
        sec_open = Signal()                 # sec != SEC_DONE and not empty: may take words
        in_entry = Signal()                 # sec == SEC_ENTRY
        word = self.index.payload
        cptr_prev = Signal(16)
        walk_col = Signal(range(NM + 1))    # current sparse column of the walker
        walk_more = Signal()                # walk_col + 1 < ncols (a register, as col_end)
        # col_ptr[walk_col + 1], kept in a register (taken from the stream for column 0, then
        # prefetched from the buffer): the buffer read, the compare and the stream's ready in
        # one cycle were a 16 ns path
        col_end = Signal(16)
        # sec_i >= col_end, kept exact as a register (it matters in the entry section, where
        # col_end only moves on a walker step): the 16-bit compare gated the index stream's
        # ready and, through it, the host link (the 68.7 MHz critical path on the ULX3S)
        col_due = Signal()
        cnt_sum = Signal(range(self.nnz_max * 2 + NM * 65536))
        # the first three row counts, kept for the start of the SpMM walk (which prefetches the
        # later ones from the row-count buffer, two rows ahead); zero past N
        cnt_first = [Signal(CMD_FIELD_BITS, name=f"cnt_first{i}") for i in range(3)]
        # the row maxima of row sec_i are cleared while its count loads, one cycle after the
        # word (the write port's enable straight from the stream's accept was a 13.2 ns path)
        clear_max = Signal()
        clear_max_v = Signal()
        clear_max_row = Signal(CB)
        m.d.sync += [clear_max_v.eq(clear_max), clear_max_row.eq(sec_i)]
        m.d.comb += [
            glob_wr.addr.eq(sec_i), glob_wr.data.eq(word),
            scol_wr.addr.eq(sec_i), scol_wr.data.eq(word),
            cptr_wr.addr.eq(sec_i), cptr_wr.data.eq(word),
            cnt_wr.addr.eq(sec_i), cnt_wr.data.eq(word),
            ent_wr.addr.eq(sec_i), ent_wr.data.row.eq(word[:8]),
            pos_wr.addr.eq(sec_i), pos_wr.data.word.eq(word[8:24]),
            pos_wr.data.bank.eq(word[24:32]),
            cptr_rd.addr.eq(walk_col + 2),
            scol_rd.addr.eq(walk_col),
            ent_wr.data.col.eq(scol_rd.data),
        ]
        next_len = Signal(17)               # length of the next section
        with m.Switch(sec):
            with m.Case(SEC_GLOB):
                m.d.comb += next_len.eq(ncols)
            with m.Case(SEC_SCOL):
                m.d.comb += next_len.eq(ncols + 1)
            with m.Case(SEC_CPTR):
                m.d.comb += next_len.eq(nnz)
            with m.Case(SEC_ENTRY):
                m.d.comb += next_len.eq(n)
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
        # the walker: the entry at sec_i belongs to walk_col once sec_i < col_ptr[walk_col + 1]
        walk_step = Signal()
        m.d.comb += walk_step.eq(in_entry & col_due & walk_more)
        accept = Signal()
        m.d.comb += [
            self.index.ready.eq(loading & sec_open & ~walk_step),
            accept.eq(self.index.valid & self.index.ready),
        ]
        with m.If(loading & sec_empty):
            m.d.sync += next_section
        with m.If(loading & walk_step):
            m.d.sync += [walk_col.eq(walk_col + 1), col_end.eq(cptr_rd.data),
                         col_due.eq(sec_i >= cptr_rd.data),
                         walk_more.eq(walk_col + 2 < ncols)]
        with m.If(accept):
            with m.Switch(sec):
                with m.Case(SEC_GLOB):
                    m.d.comb += glob_wr.en.eq(1)
                    with m.If(word >= n):
                        m.d.sync += error.eq(error | ERR_INDEX_RANGE)
                with m.Case(SEC_SCOL):
                    m.d.comb += scol_wr.en.eq(1)
                    with m.If(word >= n):
                        m.d.sync += error.eq(error | ERR_INDEX_RANGE)
                with m.Case(SEC_CPTR):
                    m.d.comb += cptr_wr.en.eq(1)
                    m.d.sync += cptr_prev.eq(word)
                    with m.If(sec_i == 1):
                        m.d.sync += col_end.eq(word)
                    with m.If(((sec_i == 0) & (word != 0)) | ((sec_i != 0) & (word < cptr_prev))
                              | (at_last & (word != nnz)) | (word >> 16 != 0)):
                        m.d.sync += error.eq(error | ERR_CSC)
                with m.Case(SEC_ENTRY):
                    m.d.comb += [ent_wr.en.eq(1), pos_wr.en.eq(1)]
                    pos_word, pos_bank = word[8:24], word[24:32]
                    with m.If((word[:8] >= n) | (pos_bank >= L) | (pos_word >= self.bank_depth)
                              | (pos_word * L + pos_bank >= nnz)):
                        m.d.sync += error.eq(error | ERR_INDEX_RANGE)
                    with m.If(col_due):                      # ran past the last column
                        m.d.sync += error.eq(error | ERR_CSC)
                with m.Case(SEC_CNT):
                    m.d.comb += cnt_wr.en.eq(1)
                    m.d.comb += clear_max.eq(1)
                    m.d.sync += cnt_sum.eq(cnt_sum + word)
                    for i in range(3):
                        with m.If(sec_i == i):
                            m.d.sync += cnt_first[i].eq(word)
            with m.If(at_last):
                m.d.sync += next_section
            with m.Else():
                # col_end does not move on an accept inside the entry section
                m.d.sync += [sec_i.eq(sec_i + 1), col_due.eq(sec_i + 1 >= col_end)]
        index_done = Signal()
        m.d.comb += index_done.eq(sec == SEC_DONE)

        # ======================================================================================
        # Line pipelines (shared by both phases; the mode selects the operands)
        # ======================================================================================
        phase2 = Signal()                  # lines in SpMM mode
        is_dense = Signal(L)               # line l belongs to the Denser engine: l < lines_d

        # --- phase 1 issue (comb) ---
        p1_run = Signal()
        d_run, s_run = Signal(), Signal()
        d_gbase = Signal(range(self.g_max + L + 1))
        d_row = Signal(range(NM + 1))
        d_word = Signal(range(self.dense_depth + NM + 1))
        d_chunk = Signal(range(FM + 1))
        s_kbase = Signal(range(self.nnz_max + L + 1))
        s_tick = Signal(range(max(FM, L) + 1))
        s_chunk = Signal(range(FM + 1))
        d_issue = Signal()
        s_issue = Signal()
        m.d.comb += [d_issue.eq(p1_run & d_run), s_issue.eq(p1_run & s_run & (s_tick < f))]
        m.d.comb += s_chunk.eq(s_tick)

        # --- phase 2 issue (comb) ---
        # The two engines walk the rows independently (each may be at most one row ahead of
        # the oldest row not yet handed to the normalisers: row x uses the accumulator bank
        # x % 2, so rows x and x + 1 are the only ones open). Each engine keeps its lead over
        # that row (0..2) and whether it has rows left as registers: comparing the row numbers
        # at issue time put two adders and comparators in front of the issue logic (14.6 ns).
        d_lead = Signal(range(3))            # r_drow - rows handed off
        s_lead = Signal(range(3))            # r_srow - rows handed off
        d_more = Signal()                    # r_drow < n
        s_more = Signal()                    # r_srow < n
        # Denser engine: its row, key group and chunk
        r_drow = Signal(range(NM + 1))
        r_dword = Signal(range(self.dense_depth + NM + 1))
        r_gbase = Signal(range(self.g_max + L + 1))
        r_dgroup = Signal(range(self.dense_groups_max + 1))
        r_dchunk = Signal(range(FM + 1))
        # Sparser engine: a stream of (entry, chunk) pairs in row order, ``s_win`` pairs per
        # cycle (one per line, consecutive, so the chunks of one cycle are distinct); its row
        # ``r_srow`` (row A) has ``a_left`` entries left, the current one included; a cycle that
        # reaches the end of row A may go on into row A + 1 (row B), so short rows pack the
        # lines. Every decision of the issue cycle comes from registers (flags of a_left, the
        # prefetched counts of rows B and C = A + 2): this is a loop (the issue decides the
        # next r_c0 / a_left), so it cannot be pipelined; reading the row count, subtracting
        # wide entry positions and comparing them in it was a 19.6 ns path.
        r_srow = Signal(range(NM + 2))
        # r_srow + 1 (row B: the score memories' second read port) and r_srow + 3 (the row
        # count prefetch) kept as registers stepping with r_srow: the adder in front of the
        # rowcnt LUT RAM's read mux tree was the 74.9 MHz ULX3S critical path
        r_srow_b = Signal(range(NM + 3))
        r_srow_pf = Signal(range(NM + 5))
        r_c0 = Signal(range(FM))                        # chunk of the first pair
        r_pword = Signal(range(self.bank_depth + 2))    # row-order position of the current
        r_pbank = Signal(range(L))                      # entry: score bank word and bank
        a_left = Signal(CMD_FIELD_BITS)                 # entries of row A left (>= 0)
        a_many = Signal()                               # a_left >= 2
        a_last = Signal()                               # a_left == 1 (else row A is empty)
        cnt_b = Signal(CMD_FIELD_BITS)                  # row counts of rows B and C
        cnt_c = Signal(CMD_FIELD_BITS)
        b_exists = Signal()                             # row B exists and holds entries
        s_win = Signal(range(L + 1))                    # pairs per cycle: min(lines_s, chunks)
        d_open = Signal()                   # the dense row may be worked on (bank open)
        s_open = Signal()                   # row A may be worked on
        b_open = Signal()                   # row B may be worked on
        p2_run = Signal()                   # the SPMM state
        m.d.comb += [d_open.eq(p2_run & d_more & (d_lead != 2)),
                     s_open.eq(p2_run & s_more & (s_lead != 2)),
                     b_open.eq(s_lead == 0)]
        o2_d = Signal()                     # a dense op is issued
        o2_dlast = Signal()                 # the Denser engine leaves its row (op or skip)
        o2_send = Signal()                  # the Sparser engine leaves row A (op or skip)
        rem = Signal(range(FM + 1))         # pairs of the current entry left: f - r_c0
        # Flags of rem, kept as registers next to r_c0 (computing them in the issue cycle, and
        # rem' and its compares for the next one, put ~10 LUT levels in the loop: 12.9 ns).
        # Their next values compare r_c0 with thresholds set once per command (w = s_win): a
        # cycle within the entry leaves rem' = f - w - r_c0 (fits' <=> r_c0 >= f - 2w), one
        # that ends it and goes on into the next entry rem' = 2f - w - r_c0 (fits' <=> r_c0 >=
        # 2f - 2w), the short last entry of a row without a row B rem' = f.
        fits = Signal()                     # a full window reaches the end of the entry
        short = Signal()                    # ... and then some: the entry ends short of it
        thr_step = Signal(signed(len(f) + 3))
        thr_wrap = Signal(signed(len(f) + 3))
        full_fits = Signal()                # f <= w: a whole entry fits a window
        full_short = Signal()               # f < w
        n_a = Signal(range(L + 1))          # pairs of row A this cycle
        n_ab = Signal(range(L + 1))         # pairs of rows A and B this cycle
        a_tail = Signal()                   # the last entry of row A ends short, no row B
        c0_wrap = Signal(range(FM))         # r_c0 after a cycle that ends the entry
        s_go = Signal()                     # the Sparser engine issues this cycle
        s_end_a = Signal()                  # this cycle's pairs reach the end of row A
        s_next = Signal()                   # this cycle's pairs reach the end of the entry
        m.d.comb += [
            rem.eq(f - r_c0),
            # a window of row A: full unless its last entry ends short
            n_a.eq(Mux(a_many | ~short, s_win, rem)),
            s_end_a.eq(a_last & fits),
            a_tail.eq(a_last & short & ~b_exists),
            # a short tail of row A waits for row B's bank rather than idling lines, unless
            # there is no row B to pack with (last row, or an empty row next); a short tail
            # with a row B fills the window with row B's first pairs
            s_go.eq(s_open & (a_many | a_last) & (a_many | ~short | ~b_exists | b_open)),
            n_ab.eq(Mux(a_tail, rem, s_win)),
            c0_wrap.eq(Mux(a_tail, 0, s_win - rem)),
            s_next.eq(s_go & fits),
            o2_send.eq(s_open & (~(a_many | a_last) | (s_go & s_end_a))),
        ]
        # per sparse line: its pair of this cycle (entry offset 0/1 from the current entry,
        # chunk, row A/B)
        sp_v = Signal(L)
        sp_o = Signal(L)
        sp_b = Signal(L)
        sp_chunk = [Signal(range(FM), name=f"l{ln}_sp_chunk") for ln in range(L)]
        for ln in range(L):
            slot = Signal(range(2 * L + 1), name=f"l{ln}_sp_slot")
            k = Signal(range(FM + 2 * L + 1), name=f"l{ln}_sp_k")
            m.d.comb += [
                slot.eq(ln - ld), k.eq(r_c0 + slot),
                sp_v[ln].eq(~is_dense[ln] & s_go & (slot < n_ab)),
                sp_o[ln].eq(k >= f),
                sp_chunk[ln].eq(Mux(k >= f, k - f, k)),
                sp_b[ln].eq(slot >= n_a),
            ]

        # index-port addresses for the issue cycle
        for ln in range(L):
            m.d.comb += [
                glob_rd[ln].addr.eq(Mux(phase2, r_gbase, d_gbase) + ln),
                ent_rd[ln].addr.eq(s_kbase + ln - ld),
                pos_rd[ln].addr.eq(s_kbase + ln - ld),
            ]
        m.d.comb += [dv_rd.addr.eq(d_word), ds_rd.addr.eq(r_dword)]
        for b in range(L):
            m.d.comb += bank_rd[b].addr.eq(r_pword + (b < r_pbank))
        m.d.comb += cnt_rd.addr.eq(r_srow_pf)              # prefetch: row C after A + 1

        # --- stage 1 registers ---
        st1 = [dict(v=Signal(name=f"l{ln}_s1_v"), first=Signal(name=f"l{ln}_s1_first"), last=Signal(name=f"l{ln}_s1_last"),
                    chunk=Signal(range(FM + 1), name=f"l{ln}_s1_chunk"))
               for ln in range(L)]
        s1_drow = Signal(range(NM + 1))
        s1_dword = Signal.like(d_word)
        s1_dactive = Signal(L)
        s1_sactive = Signal(L)
        s1_d, s1_dlast, s1_dbank, s1_send, s1_sbank = (Signal(), Signal(), Signal(), Signal(),
                                                       Signal())
        s1_dchunk = Signal(range(FM + 1))
        s1_dfirst = Signal()
        # phase 2, per sparse line: pair valid, row B, chunk
        s1_sv, s1_sb = Signal(L), Signal(L)
        # the score bank each sparse line reads, (r_pbank + entry offset) mod L, decided here
        # so that stage 1 is only a multiplexer behind the block RAMs: with the sum and its
        # wrap-around in stage 1, the dense score read -> line mux -> l*_s2a_t was four LUT
        # levels behind a 5.8 ns block RAM output (13.9 ns, a 71.9 MHz ULX3S critical path)
        s1_bank = [Signal(range(L), name=f"l{ln}_s1_bank") for ln in range(L)]
        s1_schunk = [Signal(range(FM), name=f"l{ln}_s1_schunk") for ln in range(L)]

        m.d.sync += [s1_drow.eq(d_row), s1_dword.eq(d_word)]
        for ln in range(L):
            dense_line = is_dense[ln]
            with m.If(~phase2):
                m.d.sync += [
                    st1[ln]["v"].eq(Mux(dense_line, d_issue, s_issue)),
                    st1[ln]["chunk"].eq(Mux(dense_line, d_chunk, s_chunk)),
                    st1[ln]["first"].eq(Mux(dense_line, d_chunk == 0, s_chunk == 0)),
                    st1[ln]["last"].eq(Mux(dense_line, d_chunk == f_last, s_chunk == f_last)),
                    s1_dactive[ln].eq(d_gbase + ln < g),
                    s1_sactive[ln].eq(s_kbase + ln - ld < nnz),
                ]
            with m.Else():
                m.d.sync += [
                    st1[ln]["v"].eq(0),
                    s1_dactive[ln].eq(r_gbase + ln < g),
                ]
            pbank_next = Mux(r_pbank == L - 1, 0, r_pbank + 1)
            m.d.sync += [s1_sv[ln].eq(sp_v[ln] & phase2),
                         s1_sb[ln].eq(sp_b[ln]), s1_schunk[ln].eq(sp_chunk[ln]),
                         s1_bank[ln].eq(Mux(sp_o[ln], pbank_next, r_pbank))]
        m.d.sync += [s1_d.eq(o2_d & phase2), s1_dlast.eq(o2_dlast & phase2),
                     s1_dbank.eq(r_drow[0]), s1_send.eq(o2_send & phase2),
                     s1_sbank.eq(r_srow[0]), s1_dchunk.eq(r_dchunk),
                     s1_dfirst.eq(r_dchunk == 0)]
        # row maxima for phase 2 (read in the issue cycle, selected per line in stage 1): the
        # dense row, and the Sparser engine's rows A and B; m = max of both engines' maxima
        # (formed in stage 2a)
        md_rd_a, md_rd_b = md_mem.read_port(), md_mem.read_port()
        ms_rd_a, ms_rd_b = ms_mem.read_port(), ms_mem.read_port()
        m.d.comb += [md_rd_a.addr.eq(r_srow), ms_rd_a.addr.eq(r_srow),
                     md_rd_b.addr.eq(r_srow_b), ms_rd_b.addr.eq(r_srow_b)]

        def qkv_addr(row, chunk):
            """Address of word ``chunk`` (< FM) of a Q/K/V row (stride FM): with FM a power of
            two a concatenation, no adder between the index read and the buffer address."""
            if FM & (FM - 1) == 0:
                return Cat(chunk[:ceil_log2(FM)], row)
            return row * FM + chunk

        # --- stage 1r (phase 2): the score reads answer a cycle after stage 1 (BankedMemory),
        # so what stage 1 knows of a phase-2 op waits here one cycle for them ---
        # phase-2 tags: shared (dense op, engine row ends) and per sparse line (pair valid,
        # chunk, accumulator bank = row parity: row A is r_srow, row B the next one)
        tag2_layout = data.StructLayout({"d": 1, "dlast": 1, "dbank": 1, "dfirst": 1,
                                         "dchunk": len(s1_dchunk), "send": 1, "sbank": 1})
        line2_layout = data.StructLayout({"v": 1, "chunk": len(s1_schunk[0]), "bank": 1})

        def delayed(value, stages, name):
            """``value`` through one register per stage name (as a ``tag2_layout``-style view
            when ``value`` is one)."""
            for stage in stages:
                reg = Signal.like(value, name=f"{name}_{stage}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        s1_tags = Signal(tag2_layout)
        m.d.comb += s1_tags.eq(Cat(s1_d, s1_dlast, s1_dbank, s1_dfirst, s1_dchunk, s1_send,
                                   s1_sbank))
        s1r_tags = delayed(s1_tags, ("s1r",), "tag2")
        s1r_line, s1r_bank, s1r_dactive, s1r_gcol, s1r_md, s1r_ms = [], [], [], [], [], []
        for ln in range(L):
            line = Signal(line2_layout, name=f"l{ln}_tag2_s1")
            m.d.comb += line.eq(Cat(s1_sv[ln], s1_schunk[ln], s1_sbank ^ s1_sb[ln]))
            s1r_line.append(delayed(line, ("s1r",), f"l{ln}_tag2"))
            s1r_bank.append(delayed(s1_bank[ln], ("s1r",), f"l{ln}_bank"))
            s1r_dactive.append(delayed(s1_dactive[ln], ("s1r",), f"l{ln}_dactive"))
            # the line's global column and its row maxima (one per engine), read in the issue
            # cycle like the scores
            s1r_gcol.append(delayed(glob_rd[ln].data, ("s1r",), f"l{ln}_gcol"))
            dense_line = is_dense[ln]
            md = Signal(signed(T_BITS), name=f"l{ln}_s1_md")
            ms = Signal(signed(T_BITS), name=f"l{ln}_s1_ms")
            m.d.comb += [md.eq(Mux(dense_line, md_rd.data,
                                   Mux(s1_sb[ln], md_rd_b.data, md_rd_a.data))),
                         ms.eq(Mux(dense_line, ms_rd.data,
                                   Mux(s1_sb[ln], ms_rd_b.data, ms_rd_a.data)))]
            s1r_md.append(delayed(md, ("s1r",), f"l{ln}_md"))
            s1r_ms.append(delayed(ms, ("s1r",), f"l{ln}_ms"))

        # --- stage 1 (comb): phase 1 Q/K addresses (registered: read in stage 1b; the index
        # read, the row/column mux and the Q/K buffers' address decode in one cycle were a
        # 13.3 ns path); phase 2 lane selection and row maxima ---
        line_t = [Signal(signed(T_BITS), name=f"l{ln}_t") for ln in range(L)]
        line_ok = [Signal(name=f"l{ln}_ok") for ln in range(L)]
        line_col = [Signal(CB, name=f"l{ln}_col") for ln in range(L)]
        # Phase 2 registers the lane's row maxima (one per engine), t, column and chunk here
        # and forms m and x = m - t in stage 2a: the score and row-max reads, the max of both
        # engines' maxima, the subtraction and the LUT address in one cycle were a 19.6 ns
        # path (13.4 ns with the max still in stage 1).
        s2a_md = [Signal(signed(T_BITS), name=f"l{ln}_s2a_md") for ln in range(L)]
        s2a_ms = [Signal(signed(T_BITS), name=f"l{ln}_s2a_ms") for ln in range(L)]
        s2a_t = [Signal(signed(T_BITS), name=f"l{ln}_s2a_t") for ln in range(L)]
        s2a_ok = [Signal(name=f"l{ln}_s2a_ok") for ln in range(L)]
        s2a_col = [Signal(CB, name=f"l{ln}_s2a_col") for ln in range(L)]
        s2a_chunk = [Signal(range(FM), name=f"l{ln}_s2a_chunk") for ln in range(L)]
        for ln in range(L):
            dense_line = is_dense[ln]
            ent = ent_rd[ln].data
            row1 = Signal(CB, name=f"l{ln}_p1_row")
            col1 = Signal(CB, name=f"l{ln}_p1_col")
            m.d.comb += [
                row1.eq(Mux(dense_line, s1_drow, ent.row)),
                col1.eq(Mux(dense_line, glob_rd[ln].data, ent.col)),
            ]
            # Q and K are read in phase 1 only (phase 2 reads V, see stage 2a)
            q_addr = Signal.like(q_rd[ln].addr, name=f"l{ln}_s1b_qaddr")
            k_addr = Signal.like(k_rd[ln].addr, name=f"l{ln}_s1b_kaddr")
            m.d.sync += [q_addr.eq(qkv_addr(row1, st1[ln]["chunk"])),
                         k_addr.eq(qkv_addr(col1, st1[ln]["chunk"]))]
            m.d.comb += [q_rd[ln].addr.eq(q_addr), k_rd[ln].addr.eq(k_addr)]
            # phase 2 (stage 1r): dense lanes from the dense score word, sparse lanes from the
            # banks
            bank_lane = Signal(bank_layout, name=f"l{ln}_bank_lane")
            with m.Switch(s1r_bank[ln]):
                for b in range(L):
                    with m.Case(b):
                        m.d.comb += bank_lane.eq(bank_rdata[b])
            dlane = ds_rdata[ln]
            m.d.comb += [
                line_t[ln].eq(Mux(dense_line, dlane.t, bank_lane.t)),
                line_ok[ln].eq(Mux(dense_line, dlane.ok & s1r_dactive[ln] & s1r_tags.d,
                                   s1r_line[ln].v)),
                line_col[ln].eq(Mux(dense_line, s1r_gcol[ln], bank_lane.col)),
            ]
            m.d.sync += [
                s2a_md[ln].eq(s1r_md[ln]),
                s2a_ms[ln].eq(s1r_ms[ln]),
                s2a_t[ln].eq(line_t[ln]),
                s2a_ok[ln].eq(line_ok[ln]),
                s2a_col[ln].eq(line_col[ln]),
                s2a_chunk[ln].eq(Mux(dense_line, s1r_tags.dchunk, s1r_line[ln].chunk)),
            ]

        # --- stage 2a (phase 2): m, x = m - t -> exp LUT address and shift; V address ---
        s2b_hi = [Signal(range(8), name=f"l{ln}_s2b_hi") for ln in range(L)]   # min(xi, 31) >> 2
        s2b_ok = [Signal(name=f"l{ln}_s2b_ok") for ln in range(L)]
        s2b_vaddr = [Signal.like(v_rd[ln].addr, name=f"l{ln}_s2b_vaddr") for ln in range(L)]
        for ln in range(L):
            x = Signal(signed(T_BITS + 1), name=f"l{ln}_x")
            m_line = Mux(s2a_md[ln] > s2a_ms[ln], s2a_md[ln], s2a_ms[ln])
            m.d.comb += [x.eq(m_line - s2a_t[ln]), lut_rd[ln].addr.eq(x[:T_FRAC + 2]),
                         v_rd[ln].addr.eq(s2b_vaddr[ln])]
            xi = x >> T_FRAC
            m.d.sync += [s2b_hi[ln].eq(Mux(xi > 31, 7, xi >> 2)), s2b_ok[ln].eq(s2a_ok[ln]),
                         s2b_vaddr[ln].eq(qkv_addr(s2a_col[ln], s2a_chunk[ln]))]

        # --- stage 2b (phase 2): the LUT value and the rest of the shift registered; V is
        # read meanwhile. The block RAM's output meets a flip-flop only: it is slow (5.6 ns) and
        # the placer may put its block far from the line, so the barrel shifter behind it was
        # the 72.0 MHz ULX3S critical path (a 5 ns route, then four LUT levels). The shift and
        # the rounding run in stage 2 from these registers (all of LUT read, shift, rounding and
        # the fan-out to the P multipliers in one cycle was once a 15.5 ns path) ---
        s2_lut = [Signal(E_BITS + 2, name=f"l{ln}_s2_lut") for ln in range(L)]  # (LUT << 1) >> s
        s2_hi = [Signal(range(8), name=f"l{ln}_s2_hi") for ln in range(L)]
        s2_eok = [Signal(name=f"l{ln}_s2_eok") for ln in range(L)]
        for ln in range(L):
            m.d.sync += [s2_lut[ln].eq(lut_rd[ln].data), s2_hi[ln].eq(s2b_hi[ln]),
                         s2_eok[ln].eq(s2b_ok[ln])]

        # --- stage 2 registers (phase-1 tags) ---
        def line_tags(stage, ok="ok", chunk_flags=True):
            """Each line's sideband at one pipeline stage: valid, in range, first/last chunk of
            the dot product (stages before the accumulator), row-order position, column, row."""
            def tags(ln):
                t = dict(v=Signal(name=f"l{ln}_{stage}_v"), ok=Signal(name=f"l{ln}_{stage}_{ok}"))
                if chunk_flags:
                    t.update(first=Signal(name=f"l{ln}_{stage}_first"),
                             last=Signal(name=f"l{ln}_{stage}_last"))
                t.update(pos=Signal(entry_pos_layout, name=f"l{ln}_{stage}_pos"),
                         col=Signal(CB, name=f"l{ln}_{stage}_col"),
                         row=Signal(CB, name=f"l{ln}_{stage}_row"))
                return t
            return [tags(ln) for ln in range(L)]

        # (through stage 1b, where Q and K are read)
        s1b = line_tags("s1b", ok="pok")
        s2 = line_tags("s2", ok="pok")
        s1b_dword, s2_dword = Signal.like(d_word), Signal.like(d_word)
        m.d.sync += [s1b_dword.eq(s1_dword), s2_dword.eq(s1b_dword)]
        for ln in range(L):
            dense_line = is_dense[ln]
            m.d.sync += [
                s1b[ln]["v"].eq(st1[ln]["v"]),
                s1b[ln]["ok"].eq(Mux(dense_line, s1_dactive[ln] & dv_rd.data[ln],
                                     s1_sactive[ln])),
                s1b[ln]["first"].eq(st1[ln]["first"]),
                s1b[ln]["last"].eq(st1[ln]["last"]),
                s1b[ln]["pos"].eq(pos_rd[ln].data),
                s1b[ln]["col"].eq(ent_rd[ln].data.col),
                s1b[ln]["row"].eq(Mux(dense_line, s1_drow, ent_rd[ln].data.row)),
            ]
            m.d.sync += [s2[ln][key].eq(s1b[ln][key]) for key in s1b[ln]]
        s2_tags = delayed(s1r_tags, ("s2a", "s2b", "s2"), "tag2")
        s2_line = [delayed(s1r_line[ln], ("s2a", "s2b", "s2"), f"l{ln}_tag2") for ln in range(L)]

        # --- stage 2 (comb): phase 2 e = rshift_round(LUT, xi) = (half + 1) >> 1; operand
        # selection for the multipliers (phase 1: Q and K, read in stage 1; phase 2: e and V)
        s3_a = [[Signal(signed(E_BITS + 2), name=f"l{ln}_s3_a{j}") for j in range(P)]
                for ln in range(L)]
        s3_b = [[Signal(signed(8), name=f"l{ln}_s3_b{j}") for j in range(P)] for ln in range(L)]
        s3_e = [Signal(E_BITS + 1, name=f"l{ln}_s3_e") for ln in range(L)]
        for ln in range(L):
            e = Signal(E_BITS + 1, name=f"l{ln}_e")
            half = Signal(E_BITS + 2, name=f"l{ln}_half")     # (LUT << 1) >> xi
            m.d.comb += [half.eq(s2_lut[ln] >> Cat(Const(0, 2), s2_hi[ln])),
                         e.eq(Mux(s2_eok[ln], (half + 1) >> 1, 0))]
            m.d.sync += s3_e[ln].eq(e)
            for j in range(P):
                qv = q_rd[ln].data.word_select(j, 8).as_signed()
                kv = k_rd[ln].data.word_select(j, 8).as_signed()
                vv = v_rd[ln].data.word_select(j, 8).as_signed()
                m.d.sync += [
                    s3_a[ln][j].eq(Mux(phase2, e, qv)),
                    s3_b[ln][j].eq(Mux(phase2, vv, kv)),
                ]

        # --- stage 3: products (the line's P multipliers, shared by both modes) ---
        s4_prod = [[Signal(signed(E_BITS + 10), name=f"l{ln}_s4_p{j}") for j in range(P)]
                   for ln in range(L)]
        for ln in range(L):
            for j in range(P):
                m.d.sync += s4_prod[ln][j].eq(s3_a[ln][j] * s3_b[ln][j])
        s3 = line_tags("s3")
        s4 = line_tags("s4")
        for ln in range(L):
            for key in s2[ln]:
                m.d.sync += [s3[ln][key].eq(s2[ln][key]), s4[ln][key].eq(s3[ln][key])]
        s3_dword, s4_dword = Signal.like(d_word), Signal.like(d_word)
        m.d.sync += [s3_dword.eq(s2_dword), s4_dword.eq(s3_dword)]
        # phase-2 tags through stages 3 and 4
        s3_tags, s4_tags = Signal(tag2_layout), Signal(tag2_layout)
        m.d.sync += [s3_tags.eq(s2_tags), s4_tags.eq(s3_tags)]
        s3_line = [Signal(line2_layout, name=f"l{ln}_s3_tag2") for ln in range(L)]
        s4_line = [Signal(line2_layout, name=f"l{ln}_s4_tag2") for ln in range(L)]
        for ln in range(L):
            m.d.sync += [s3_line[ln].eq(s2_line[ln]), s4_line[ln].eq(s3_line[ln])]
        s4_e = [Signal(E_BITS + 1, name=f"l{ln}_s4_e") for ln in range(L)]
        for ln in range(L):
            m.d.sync += s4_e[ln].eq(s3_e[ln])

        # --- stage 4, phase 1: lane tree of the dot product; phase 2: trees across lines ---
        dot_w = 16 + ceil_log2(P) + 1
        s5_dot = [Signal(signed(dot_w), name=f"l{ln}_s5_dot") for ln in range(L)]
        for ln in range(L):
            total = s4_prod[ln][0]
            for j in range(1, P):
                total = total + s4_prod[ln][j]
            m.d.sync += s5_dot[ln].eq(total)
        s5 = line_tags("s5")
        for ln in range(L):
            for key in s4[ln]:
                m.d.sync += s5[ln][key].eq(s4[ln][key])
        s5_dword = Signal.like(d_word)
        m.d.sync += s5_dword.eq(s4_dword)

        sum_w = E_BITS + 10 + ceil_log2(L) + 1
        s5_dsum = [Signal(signed(sum_w), name=f"s5_dsum{j}") for j in range(P)]
        s5_de = Signal(E_BITS + 1 + ceil_log2(L) + 1)
        for j in range(P):
            dsum = 0
            for ln in range(L):
                dsum = dsum + Mux(is_dense[ln], s4_prod[ln][j], 0)
            m.d.sync += s5_dsum[j].eq(dsum)
        de = 0
        for ln in range(L):
            de = de + Mux(is_dense[ln], s4_e[ln], 0)
        m.d.sync += s5_de.eq(de)
        s5_tags = Signal(tag2_layout)
        m.d.sync += s5_tags.eq(s4_tags)
        # Sparser engine: the pairs of one cycle have distinct chunks, so no tree: each chunk
        # takes the products of the (at most one) line holding it, with that line's bank; the
        # line holding chunk 0 also brings its e (each entry's e is counted once, into l).
        s5_sval = [[Signal(signed(E_BITS + 10), name=f"s5_sval{c}_{j}") for j in range(P)]
                   for c in range(FM)]
        s5_sv = Signal(FM)
        s5_sbank = Signal(FM)
        s5_se = Signal(E_BITS + 1)
        for c in range(FM):
            hit = [~is_dense[ln] & s4_line[ln].v & (s4_line[ln].chunk == c) for ln in range(L)]
            for j in range(P):
                val = 0
                for ln in range(L):
                    val = val | Mux(hit[ln], s4_prod[ln][j], 0)
                m.d.sync += s5_sval[c][j].eq(val)
            bank = 0
            any_hit = 0
            for ln in range(L):
                bank = bank | (hit[ln] & s4_line[ln].bank)
                any_hit = any_hit | hit[ln]
            m.d.sync += [s5_sv[c].eq(any_hit), s5_sbank[c].eq(bank)]
            if c == 0:
                e0 = 0
                for ln in range(L):
                    e0 = e0 | Mux(hit[ln], s4_e[ln], 0)
                m.d.sync += s5_se.eq(e0)

        # --- stage 5, phase 1: accumulate the dot product; on the last chunk -> requantiser ---
        acc1 = [Signal(signed(32), name=f"l{ln}_score_acc") for ln in range(L)]
        s6 = line_tags("s6", chunk_flags=False)
        s6_dword = Signal.like(d_word)
        m.d.sync += s6_dword.eq(s5_dword)
        requants = []
        for ln in range(L):
            total = Mux(s5[ln]["first"], 0, acc1[ln]) + s5_dot[ln]
            with m.If(s5[ln]["v"]):
                m.d.sync += acc1[ln].eq(total)
            m.d.sync += [s6[ln]["v"].eq(s5[ln]["v"] & s5[ln]["last"]),
                         s6[ln]["ok"].eq(s5[ln]["ok"]),
                         s6[ln]["pos"].eq(s5[ln]["pos"]), s6[ln]["col"].eq(s5[ln]["col"]),
                         s6[ln]["row"].eq(s5[ln]["row"])]
            rq = Requantizer(lanes=1, in_width=32, out_width=T_BITS)
            m.submodules[f"score_requant{ln}"] = rq
            requants.append(rq)
            m.d.comb += [
                rq.i.valid.eq(s6[ln]["v"]), rq.i.payload[0].eq(acc1[ln]),
                rq.multiplier.eq(self.score_multiplier), rq.shift.eq(self.score_shift),
                rq.o.ready.eq(1),          # never stalls: the requantiser has a fixed latency
            ]
        # tags delayed by the requantiser latency
        tag_layout = data.StructLayout({"ok": 1, "pos": entry_pos_layout, "col": unsigned(CB),
                                        "row": unsigned(CB)})
        tags_out = []
        for ln in range(L):
            prev = Signal(tag_layout, name=f"l{ln}_rq_tag0")
            m.d.comb += [prev.ok.eq(s6[ln]["ok"]), prev.pos.eq(s6[ln]["pos"]),
                         prev.col.eq(s6[ln]["col"]), prev.row.eq(s6[ln]["row"])]
            for st in range(Requantizer.LATENCY):
                nxt = Signal(tag_layout, name=f"l{ln}_rq_tag{st + 1}")
                m.d.sync += nxt.eq(prev)
                prev = nxt
            tags_out.append(prev)
        dword_out = s6_dword
        for st in range(Requantizer.LATENCY):
            nxt = Signal.like(d_word, name=f"rq_dword{st + 1}")
            m.d.sync += nxt.eq(dword_out)
            dword_out = nxt

        # dense score write: all dense lines finish together
        dense_write = Signal()
        m.d.comb += dense_write.eq(requants[0].o.valid & is_dense[0])
        m.d.comb += [ds_wr.addr.eq(dword_out), ds_wr.en.eq(dense_write)]
        for ln in range(L):
            m.d.comb += [ds_wdata[ln].t.eq(requants[ln].o.payload[0]),
                         ds_wdata[ln].ok.eq(is_dense[ln] & tags_out[ln].ok)]
        # dense row max: max over the dense lanes, then read-modify-write of md[row]; the
        # first level of the max tree (lane pairs) is registered: the whole tree in the
        # requantiser's output cycle was a 14.9 ns path
        def max_level(cand):
            return ([Mux(cand[a] > cand[a + 1], cand[a], cand[a + 1])
                     for a in range(0, len(cand) - 1, 2)] + ([cand[-1]] if len(cand) % 2 else []))
        pairs = max_level([Mux(is_dense[ln] & tags_out[ln].ok, requants[ln].o.payload[0], T_MIN)
                           for ln in range(L)])
        dpair_v = Signal()
        dpair_row = Signal(CB)
        dpair_t = [Signal(signed(T_BITS), name=f"dmax_pair{i}") for i in range(len(pairs))]
        m.d.sync += [dpair_v.eq(dense_write), dpair_row.eq(tags_out[0].row),
                     *[r.eq(x) for r, x in zip(dpair_t, pairs)]]
        cand = dpair_t
        while len(cand) > 1:
            cand = max_level(cand)
        dmax_v = Signal()
        dmax_row = Signal(CB)
        dmax_t = Signal(signed(T_BITS))
        m.d.sync += [dmax_v.eq(dpair_v), dmax_row.eq(dpair_row), dmax_t.eq(cand[0])]
        # sparse scores: one holding register per line, written one per cycle into the banks
        hold_full = Signal(L)
        hold_layout = data.StructLayout({"t": signed(T_BITS), "pos": entry_pos_layout,
                                         "col": unsigned(CB), "row": unsigned(CB)})
        hold = [Signal(hold_layout, name=f"l{ln}_hold") for ln in range(L)]
        write_sel = Signal(range(L))
        write_any = Signal()
        for ln in reversed(range(L)):
            with m.If(hold_full[ln]):
                m.d.comb += [write_sel.eq(ln), write_any.eq(1)]
        wsel = Signal(hold_layout)
        with m.Switch(write_sel):
            for ln in range(L):
                with m.Case(ln):
                    m.d.comb += wsel.eq(hold[ln])
        for b in range(L):
            m.d.comb += [bank_wr[b].addr.eq(wsel.pos.word), bank_wdata[b].t.eq(wsel.t),
                         bank_wdata[b].col.eq(wsel.col),
                         bank_wr[b].en.eq(write_any & (wsel.pos.bank == b)
                                          & (wsel.pos.word < self.bank_depth))]
        for ln in range(L):
            clear = write_any & (write_sel == ln)
            arrive = requants[ln].o.valid & ~is_dense[ln] & tags_out[ln].ok
            with m.If(arrive):
                m.d.sync += [hold_full[ln].eq(1), hold[ln].t.eq(requants[ln].o.payload[0]),
                             hold[ln].pos.eq(tags_out[ln].pos), hold[ln].col.eq(tags_out[ln].col),
                             hold[ln].row.eq(tags_out[ln].row)]
            with m.Elif(clear):
                m.d.sync += hold_full[ln].eq(0)

        smax_v = Signal()
        smax_row = Signal(CB)
        smax_t = Signal(signed(T_BITS))
        m.d.sync += [smax_v.eq(write_any), smax_row.eq(wsel.row), smax_t.eq(wsel.t)]
        # the sparse row-max RMW reads at smax_row (registered: the writer's selection straight
        # into the read address was a 12.1 ns path) and compares one cycle later
        smax2_v = Signal()
        smax2_row = Signal(CB)
        smax2_t = Signal(signed(T_BITS))
        m.d.sync += [smax2_v.eq(smax_v), smax2_row.eq(smax_row), smax2_t.eq(smax_t)]
        # The RMW of one update (v, row, t), valid in the cycle its read data arrives (the read
        # is issued one cycle ahead, at dpair_row / smax_row): D registers the read data, C
        # forms the max and registers it, W writes it. (Compare and write in the cycle behind
        # the block RAM's output was a 12.2 ns path, 12.3 ns with the compare registered.)
        # The read is transparent for the write of its own cycle; the two later writes it
        # cannot see, of the two previous updates (being written in C's cycle, and written one
        # cycle before), are forwarded when they are for the same row, the newer first. The
        # ports serve LOAD (clear) and phase 2 (read) too.
        def row_max_rmw(name, wr, rd, v, row, t):
            c_v, w_v, x_v = (Signal(name=f"{name}_{st}_v") for st in "cwx")
            c_row, w_row, x_row = (Signal(CB, name=f"{name}_{st}_row") for st in "cwx")
            c_t = Signal(signed(T_BITS), name=f"{name}_c_t")
            c_rd = Signal(signed(T_BITS), name=f"{name}_c_rd")
            w_max, x_max = (Signal(signed(T_BITS), name=f"{name}_{st}_max") for st in "wx")
            # the forward selects, known one cycle ahead: in C, w holds what is in C now, and x
            # what is in W now (registered: the row compares in front of the max were 13 ns)
            c_hit_w, c_hit_x = Signal(name=f"{name}_fwd_w"), Signal(name=f"{name}_fwd_x")
            m.d.sync += [c_v.eq(v), c_row.eq(row), c_t.eq(t), c_rd.eq(rd.data),
                         c_hit_w.eq(c_v & (c_row == row)), c_hit_x.eq(w_v & (w_row == row))]
            cur = Mux(c_hit_w, w_max, Mux(c_hit_x, x_max, c_rd))
            m.d.sync += [w_v.eq(c_v), w_row.eq(c_row), w_max.eq(Mux(c_t > cur, c_t, cur)),
                         x_v.eq(w_v), x_row.eq(w_row), x_max.eq(w_max)]
            with m.If(clear_max_v):
                m.d.comb += [wr.en.eq(1), wr.addr.eq(clear_max_row), wr.data.eq(T_MIN)]
            with m.Else():
                m.d.comb += [wr.en.eq(w_v), wr.addr.eq(w_row), wr.data.eq(w_max)]
            return c_v | w_v                 # updates not written yet

        dmax_pending = row_max_rmw("dmax", md_wr, md_rd, dmax_v, dmax_row, dmax_t)
        smax_pending = row_max_rmw("smax", ms_wr, ms_rd, smax2_v, smax2_row, smax2_t)
        # phase 2: the Denser engine's row (read in the issue cycle, used in stage 1)
        m.d.comb += [md_rd.addr.eq(Mux(phase2, r_drow, dpair_row)),
                     ms_rd.addr.eq(Mux(phase2, r_drow, smax_row))]

        # --- stage 5, phase 2: accumulate the output rows of both engines ---
        # Two accumulator banks (ping-pong by row parity): row x adds into bank x % 2. Each
        # engine adds into the bank of its own row, so in one cycle both banks may be updated
        # (the Denser engine on one row, the Sparser engine on the end of row A and the start
        # of row B); integer sums do not depend on the order, so this is bit-exact.
        acc = [[Signal(signed(ACC_BITS), name=f"acc{b}_{x}") for x in range(FM * P)]
               for b in range(2)]
        lsum = [Signal(E_BITS + 1 + ceil_log2(NM + 1) + 1, name=f"lsum{b}") for b in range(2)]
        t5 = s5_tags
        bank_clear = Signal(2)
        for b in range(2):
            d_here = t5.d & (t5.dbank == b)
            with m.If(bank_clear[b]):
                m.d.sync += [a.eq(0) for a in acc[b]] + [lsum[b].eq(0)]
            with m.Else():
                for c in range(FM):
                    s_here = s5_sv[c] & (s5_sbank[c] == b)
                    for j in range(P):
                        m.d.sync += acc[b][c * P + j].eq(
                            acc[b][c * P + j] + Mux(d_here & (t5.dchunk == c), s5_dsum[j], 0)
                            + Mux(s_here, s5_sval[c][j], 0))
                m.d.sync += lsum[b].eq(lsum[b] + Mux(d_here & t5.dfirst, s5_de, 0)
                                       + Mux(s5_sv[0] & (s5_sbank[0] == b), s5_se, 0))
        l_d = lsum[0]         # (width reference for the normaliser)

        # ======================================================================================
        # NORMALISE: l = l_d + l_s, r = 2**32 / l, out = requantize((acc_d + acc_s) * r)
        # ``normalisers`` slots, each with its own reciprocal unit (an iterative divider, ~37
        # cycles), take rows round-robin, so a row leaves every ~37 / normalisers cycles; the
        # slots hand their rows to one product stage + requantiser in the same order.
        # ======================================================================================
        K = self.normalisers
        SW = ACC_BITS + 1                              # merged accumulator width
        slot_full = Signal(K)                          # holds a row
        slot_rq_sent = Signal(K)                       # l handed to its reciprocal unit
        slot_ready = Signal(K)                         # r known: may stream out
        slot_acc = [[Signal(signed(SW), name=f"norm{j}_acc{x}") for x in range(FM * P)]
                    for j in range(K)]
        slot_l = [Signal(len(l_d) + 1, name=f"norm{j}_l") for j in range(K)]
        slot_r = [Signal(E_BITS + 3, name=f"norm{j}_r") for j in range(K)]
        in_turn = Signal(range(K))
        out_turn = Signal(range(K))
        d_done = Signal(2)                  # the Denser engine's last op of the bank's row added
        s_done = Signal(2)                  # the Sparser engine's likewise
        hand_bank = Signal()                # rows are handed off in order: banks alternate
        with m.If(t5.dlast):
            m.d.sync += d_done.bit_select(t5.dbank, 1).eq(1)
        with m.If(t5.send):
            m.d.sync += s_done.bit_select(t5.sbank, 1).eq(1)
        # A row's last ops update its bank in the cycle that sets its done bits: hand off (copy
        # and clear) from the next cycle on, once the next slot is free.
        handoff = Signal()
        m.d.comb += handoff.eq(d_done.bit_select(hand_bank, 1) & s_done.bit_select(hand_bank, 1)
                               & ~slot_full.bit_select(in_turn, 1))
        m.d.sync += [d_lead.eq(d_lead + o2_dlast - handoff),
                     s_lead.eq(s_lead + o2_send - handoff)]
        with m.If(handoff):
            m.d.comb += bank_clear.bit_select(hand_bank, 1).eq(1)
            m.d.sync += [d_done.bit_select(hand_bank, 1).eq(0),
                         s_done.bit_select(hand_bank, 1).eq(0), hand_bank.eq(~hand_bank),
                         in_turn.eq(Mux(in_turn == K - 1, 0, in_turn + 1))]
            with m.Switch(Cat(hand_bank, in_turn)):
                for j in range(K):
                    for b in range(2):
                        with m.Case(b | (j << 1)):
                            m.d.sync += [slot_full[j].eq(1), slot_l[j].eq(lsum[b])]
                            m.d.sync += [a.eq(x) for a, x in zip(slot_acc[j], acc[b])]

        for j in range(K):
            recip = Reciprocal(frac_bits=RECIP_FRAC, den_width=len(slot_l[j]),
                               out_width=E_BITS + 3)
            m.submodules[f"reciprocal{j}"] = recip
            m.d.comb += [recip.i.payload.eq(slot_l[j]),
                         recip.i.valid.eq(slot_full[j] & ~slot_rq_sent[j]),
                         recip.o.ready.eq(1)]
            with m.If(recip.i.valid & recip.i.ready):
                m.d.sync += slot_rq_sent[j].eq(1)
            with m.If(recip.o.valid):
                m.d.sync += [slot_r[j].eq(recip.o.payload.value), slot_ready[j].eq(1)]

        m.submodules.out_requant = orq = Requantizer(lanes=P, in_width=SW + E_BITS + 4,
                                                     out_width=8)
        wiring.connect(m, orq.o, wiring.flipped(self.out))
        m.d.comb += [orq.multiplier.eq(self.out_multiplier), orq.shift.eq(self.out_shift)]
        # Product stages, one chunk per cycle into the requantiser, three registered steps (the
        # slot/chunk selection, the 33 x 18 product and its operand mux in one cycle was a 31 ns
        # path): N0 selects the chunk and r of the slot in turn; N1 and N2 are the Requantizer's
        # split product (partial products of 17-bit pieces of the accumulator, their sum). One
        # enable for the whole pipe, as in the Requantizer: every stage advances when the last
        # one is empty or taken.
        RW = len(slot_r[0])
        prod_advance = Signal()
        sel_valid = Signal()
        sel_acc = [Signal(signed(SW), name=f"norm_sel_acc{x}") for x in range(P)]
        sel_r = Signal(RW)
        part_valid = Signal()
        prod_valid = Signal()
        n_chunk = Signal(range(FM + 1))
        m.d.comb += [orq.i.valid.eq(prod_valid),
                     prod_advance.eq(~prod_valid | orq.i.ready)]
        feeding = Signal()
        m.d.comb += feeding.eq(slot_ready.bit_select(out_turn, 1))
        with m.If(prod_advance):
            m.d.sync += [sel_valid.eq(feeding), part_valid.eq(sel_valid),
                         prod_valid.eq(part_valid)]
            prods = [split_product(m, sel_acc[x], sel_r, SW + E_BITS + 4, name=f"norm_prod{x}")
                     for x in range(P)]
            # The slot in turn streams its row out of its chunk 0 and shifts the others down
            # one chunk per beat, so the selection is a K-way choice of P lanes: a (K * FM)-way
            # one over every slot register (3 x 8 x 264 bits) was the ViTCoD core's densest
            # wiring, and with one slot fewer the ULX3S placement estimate rose by a quarter.
            with m.If(feeding):
                with m.Switch(out_turn):
                    for j in range(K):
                        with m.Case(j):
                            m.d.sync += sel_r.eq(slot_r[j])
                            m.d.sync += [sel_acc[x].eq(slot_acc[j][x]) for x in range(P)]
                            m.d.sync += [slot_acc[j][x].eq(slot_acc[j][x + P])
                                         for x in range(P * (FM - 1))]
                            with m.If(n_chunk == f_last):
                                m.d.sync += [slot_full[j].eq(0), slot_rq_sent[j].eq(0),
                                             slot_ready[j].eq(0)]
                with m.If(n_chunk == f_last):
                    m.d.sync += [n_chunk.eq(0),
                                 out_turn.eq(Mux(out_turn == K - 1, 0, out_turn + 1))]
                with m.Else():
                    m.d.sync += n_chunk.eq(n_chunk + 1)
        m.d.comb += [orq.i.payload[x].eq(prods[x]) for x in range(P)]

        # ======================================================================================
        # Control
        # ======================================================================================
        p1_inflight = Signal()
        any_stage = 0
        for ln in range(L):
            any_stage = (any_stage | st1[ln]["v"] | s1b[ln]["v"] | s2[ln]["v"] | s3[ln]["v"]
                         | s4[ln]["v"] | s5[ln]["v"] | s6[ln]["v"] | requants[ln].o.valid)
        # results inside the requantisers (their pipeline registers are not visible here)
        rq_pending = Signal(Requantizer.LATENCY * L)
        m.d.sync += rq_pending.eq(Cat(*[s6[ln]["v"] for ln in range(L)], rq_pending))
        m.d.comb += p1_inflight.eq(any_stage | (hold_full != 0) | (rq_pending != 0)
                                  | dpair_v | dmax_v | smax_v | smax2_v | dmax_pending
                                  | smax_pending)
        # registered, with the issue of the same cycle (so nothing issued up to the previous
        # cycle is missed): the OR over every stage's valid bits fanned out into the SpMM start
        # registers was a 12.0 ns path; the drain takes one cycle more
        p1_quiet = Signal()
        m.d.sync += p1_quiet.eq(~p1_inflight & ~d_issue & ~s_issue)
        out_words = Signal(range(NM * FM + 1))
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += out_words.eq(out_words + 1)
        out_last = Signal(range(NM * FM + 1))          # n * chunks - 1: the last beat

        with m.FSM(name="control"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += cmd.eq(self.cmd.payload)
                    m.next = "CMD_PRODUCTS"

            with m.State("CMD_PRODUCTS"):              # cmd_cover etc. are registered
                m.next = "CMD_CHECK"

            with m.State("CMD_CHECK"):                 # cmd_ok is registered
                m.next = "CMD_ACCEPT"

            with m.State("CMD_ACCEPT"):
                with m.If(cmd_ok):
                    ld_new = cmd.lines_d[:len(ld)]
                    m.d.sync += [
                        n.eq(cmd.n), f.eq(cmd.chunks), g.eq(cmd.g), nnz.eq(cmd.nnz),
                        f_last.eq(cmd.chunks - 1), n_last.eq(cmd.n - 1),
                        ld.eq(ld_new), ls.eq(L - ld_new), dgroups.eq(cmd.dense_groups),
                        s_period.eq(Mux(L - ld_new > cmd.chunks, L - ld_new, cmd.chunks)),
                        s_win.eq(Mux(L - ld_new < cmd.chunks, L - ld_new, cmd.chunks)),
                        ncols.eq(cmd.n - cmd.g),
                        error.eq(error & ERR_BAD_CMD),
                        cycles.eq(0), sddmm_cycles.eq(0), spmm_cycles.eq(0),
                        dense_busy.eq(0), sparse_busy.eq(0),
                        dv_addr.eq(0), dv_done.eq(cmd.dense_groups == 0),
                        dv_last.eq(cmd_dv_total - 1),
                        sec.eq(SEC_GLOB), sec_i.eq(0), sec_last.eq(cmd.g - 1),
                        sec_empty.eq(cmd.g == 0), sec_open.eq(cmd.g != 0),
                        in_entry.eq(0), walk_col.eq(0),
                        walk_more.eq(cmd.n - cmd.g > 1), cnt_sum.eq(0),
                        cptr_prev.eq(0), col_end.eq(0), col_due.eq(1), out_words.eq(0),
                        *[c.eq(0) for c in cnt_first],
                        in_turn.eq(0), out_turn.eq(0), n_chunk.eq(0),
                        out_last.eq(cmd_out_total - 1),
                        *q_reset, *k_reset, *v_reset,
                    ]
                    for ln in range(L):
                        m.d.sync += is_dense[ln].eq(ln < ld_new)
                    m.next = "LOAD"
                with m.Else():
                    m.d.sync += error.eq(error | ERR_BAD_CMD)
                    m.next = "IDLE"

            with m.State("LOAD"):
                m.d.comb += [loading.eq(1), self.busy.eq(1)]
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(q_done & k_done & v_done & dv_done & index_done):
                    with m.If(cnt_sum != nnz):
                        m.d.sync += error.eq(error | ERR_INDEX_RANGE)
                    m.d.sync += [
                        d_gbase.eq(0), d_row.eq(0), d_word.eq(0), d_chunk.eq(0),
                        d_run.eq(g != 0), s_kbase.eq(0), s_tick.eq(0), s_run.eq(nnz != 0),
                    ]
                    m.next = "SDDMM"

            with m.State("SDDMM"):
                m.d.comb += [p1_run.eq(1), self.busy.eq(1)]
                m.d.sync += [cycles.eq(cycles + 1), sddmm_cycles.eq(sddmm_cycles + 1)]
                with m.If(d_issue):
                    m.d.sync += dense_busy.eq(dense_busy + 1)
                    with m.If(d_chunk == f_last):
                        m.d.sync += [d_chunk.eq(0), d_word.eq(d_word + 1)]
                        with m.If(d_row == n_last):
                            m.d.sync += [d_row.eq(0), d_gbase.eq(d_gbase + ld)]
                            with m.If(d_gbase + ld >= g):
                                m.d.sync += d_run.eq(0)
                        with m.Else():
                            m.d.sync += d_row.eq(d_row + 1)
                    with m.Else():
                        m.d.sync += d_chunk.eq(d_chunk + 1)
                with m.If(s_run):
                    with m.If(s_issue):
                        m.d.sync += sparse_busy.eq(sparse_busy + 1)
                    with m.If(s_tick == s_period - 1):
                        m.d.sync += [s_tick.eq(0), s_kbase.eq(s_kbase + ls)]
                        with m.If(s_kbase + ls >= nnz):
                            m.d.sync += s_run.eq(0)
                    with m.Else():
                        m.d.sync += s_tick.eq(s_tick + 1)
                with m.If(~d_run & ~s_run):
                    m.next = "SDDMM_DRAIN"

            with m.State("SDDMM_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [cycles.eq(cycles + 1), sddmm_cycles.eq(sddmm_cycles + 1)]
                with m.If(p1_quiet):
                    m.d.sync += [phase2.eq(1), r_drow.eq(0), r_dword.eq(0), r_gbase.eq(0),
                                 r_dgroup.eq(0), r_dchunk.eq(0), r_srow.eq(0),
                                 r_srow_b.eq(1), r_srow_pf.eq(3),
                                 r_c0.eq(0), fits.eq(f <= s_win), short.eq(f < s_win),
                                 full_fits.eq(f <= s_win), full_short.eq(f < s_win),
                                 thr_step.eq(f - 2 * s_win), thr_wrap.eq(2 * f - 2 * s_win),
                                 r_pword.eq(0), r_pbank.eq(0),
                                 a_left.eq(cnt_first[0]), a_many.eq(cnt_first[0] >= 2),
                                 a_last.eq(cnt_first[0] == 1), cnt_b.eq(cnt_first[1]),
                                 cnt_c.eq(cnt_first[2]),
                                 b_exists.eq((n > 1) & (cnt_first[1] != 0)),
                                 d_lead.eq(0), s_lead.eq(0), d_more.eq(1), s_more.eq(1),
                                 d_done.eq(0),
                                 s_done.eq(0), hand_bank.eq(0)]
                    m.next = "SPMM"

            # ---- phase 2: both engines walk the rows, each at its own pace (see issue) ----
            with m.State("SPMM"):
                m.d.comb += [self.busy.eq(1), p2_run.eq(1)]
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(~d_more & ~s_more):
                    m.next = "FINISH"
                with m.Else():
                    m.d.sync += spmm_cycles.eq(spmm_cycles + 1)
                # Denser engine: ceil(G / lines_d) key groups of ``chunks`` ops per row; with
                # G = 0 it passes a row per cycle (no op: the row's dense part is empty)
                with m.If(o2_dlast):
                    m.d.sync += d_more.eq(r_drow + 1 < n)
                with m.If(d_open):
                    with m.If(dgroups == 0):
                        m.d.comb += o2_dlast.eq(1)
                        m.d.sync += [r_drow.eq(r_drow + 1), r_dword.eq(r_drow + 1)]
                    with m.Else():
                        m.d.comb += o2_d.eq(1)
                        m.d.sync += dense_busy.eq(dense_busy + 1)
                        with m.If(r_dchunk == f_last):
                            with m.If(r_dgroup + 1 >= dgroups):
                                m.d.comb += o2_dlast.eq(1)
                                m.d.sync += [r_drow.eq(r_drow + 1), r_dword.eq(r_drow + 1),
                                             r_dgroup.eq(0), r_dchunk.eq(0), r_gbase.eq(0)]
                            with m.Else():
                                m.d.sync += [r_dchunk.eq(0), r_dgroup.eq(r_dgroup + 1),
                                             r_dword.eq(r_dword + n), r_gbase.eq(r_gbase + ld)]
                        with m.Else():
                            m.d.sync += r_dchunk.eq(r_dchunk + 1)
                # Sparser engine: an empty row passes in one cycle (no op); otherwise s_win
                # pairs (fewer only at the end of a row with no row B to pack with)
                with m.If(o2_send):
                    # row B becomes row A (its count is a_left from now on: a row ends with
                    # a_left 0 or on its last entry), row C row B; the next count is prefetched
                    m.d.sync += [r_srow.eq(r_srow + 1), s_more.eq(r_srow_b < n),
                                 r_srow_b.eq(r_srow_b + 1), r_srow_pf.eq(r_srow_pf + 1),
                                 a_left.eq(cnt_b), a_many.eq(cnt_b >= 2), a_last.eq(cnt_b == 1),
                                 cnt_b.eq(cnt_c), cnt_c.eq(cnt_rd.data),
                                 b_exists.eq((r_srow + 2 < n) & (cnt_c != 0))]
                with m.Elif(s_next):
                    m.d.sync += [a_left.eq(a_left - 1), a_many.eq(a_left >= 3),
                                 a_last.eq(a_left == 2)]
                with m.If(s_go):
                    m.d.sync += sparse_busy.eq(sparse_busy + 1)
                    with m.If(fits):
                        m.d.sync += [r_c0.eq(c0_wrap),
                                     fits.eq(Mux(a_tail, full_fits, r_c0 >= thr_wrap)),
                                     short.eq(Mux(a_tail, full_short, r_c0 > thr_wrap))]
                        with m.If(r_pbank == L - 1):
                            m.d.sync += [r_pbank.eq(0), r_pword.eq(r_pword + 1)]
                        with m.Else():
                            m.d.sync += r_pbank.eq(r_pbank + 1)
                    with m.Else():
                        m.d.sync += [r_c0.eq(r_c0 + s_win), fits.eq(r_c0 >= thr_step),
                                     short.eq(r_c0 > thr_step)]

            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(self.out.valid & self.out.ready & (out_words == out_last)):
                    m.d.sync += phase2.eq(0)
                    m.next = "IDLE"
        return m
