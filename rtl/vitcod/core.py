"""ViTCoD attention core: a Denser and a Sparser engine on shared PE lines, one head per command.

Golden twin: :func:`vitaccel.golden.vitcod.attention_int_compiled`, bit for bit.

``lines`` PE lines of ``macs_per_line`` int8 MACs. Per command (one head) the line split is set
at run time: lines ``[0, lines_d)`` form the **Denser engine** (global columns), the others the
**Sparser engine** (the CSC entries); both work in every phase. N, G, nnz and d (as ``chunks``
= ceil(d / macs) words per row) are run-time values bounded by the Config. The phases, and the
components that carry them out:

1. LOAD: ``q``/``k``/``v`` rows (``chunks`` beats of ``macs`` lanes, lanes past d zero) into
   their buffers (:class:`~.loader.RowLoader`); ``dense_valid``, the N x G validity bitmap, one
   ``lines``-bit word per (key group, query) (:class:`~.loader.WordLoader`); ``index``, the
   compiled mask, into the index buffers with the CSC expanded (:class:`~.csc_walker.CSCWalker`).
2. SDDMM (:class:`~.sddmm_issue.SddmmIssue`): each line (:class:`~.operand_fetch.OperandFetch`,
   :class:`~.line.MacLine`) reduces Q.K over ``chunks`` cycles and requantises it; the scores go
   to the score buffers in row order (:class:`~.score_writer.ScoreWriter`) and each engine keeps
   its row maxima (:class:`~.row_max.RowMax`), so the softmax needs no pass of its own.
3. SOFTMAX + SpMM, row by row, the engines decoupled (:class:`~.spmm_issue.DenserWalk`,
   :class:`~.spmm_issue.SparserPacker`): ``e = exp2(max(m_dense, m_sparse) - t)`` times V into
   the row's accumulator bank (:class:`~.accumulator.Accumulator`).
4. NORMALISE, overlapped with the next rows (:class:`~.normaliser.Normaliser`): ``out`` =
   requantize(acc * 2**RECIP_FRAC / l) to int8, ``chunks`` beats per row.

This module holds the command check, the phase FSM and the connections; the memories the
components share are made in :mod:`.buffers`. Each component owns its registers and clears them
on its own start strobe: ``start`` (a command is accepted), the end of LOAD (SDDMM begins), the
end of the SDDMM drain (SpMM begins).

Errors (``error`` bits): ``ERR_BAD_CMD`` (sticky until reset) a command outside the configured
limits (index-buffer overflow included) is rejected without consuming data, so the core never
hangs. The command is registered when taken, its products one cycle later and its check one
more cycle later, and only then accepted or rejected, so that the comparators and 16 x 16
products of the check are not in front of the enables of the registers that take it. Per
command (cleared when the next is accepted): ``ERR_CSC`` a malformed CSC, ``ERR_INDEX_RANGE``
an index out of range or row counts not summing to nnz (:mod:`.csc_walker`). They do not stop
the core: every loop is bounded by the command's sizes, addresses are clamped, and the
(meaningless) output is produced.

Where cycles go (measured in ``benchmarks/results/vitcod.md``; phase 3's cycle model is
:func:`vitaccel.golden.vitcod.spmm_schedule`): the Denser engine holds one global key per line,
so the host never gives it more lines than G (:func:`vitaccel.golden.vitcod.line_split`); a
partial last key group idles lines. The Sparser engine's SDDMM group takes ``max(chunks,
lines_s)`` cycles (one score-bank write per cycle); its packed SpMM idles lines only before an
empty row and in the last cycle, and with ``lines_s > chunks`` uses ``chunks`` lines. With two
accumulator banks the engines drift apart by one row at most, so a row much longer for one
engine (the CLS row) stalls the other; more banks would recover part of that.

Choices the spec leaves open: the exact row max (kept while the scores are written); the
row-order permutation precomputed offline (static mask) rather than a read-modify-write
scatter; K re-read from the line's K port every cycle instead of a d-byte register copy (same
loop order, no FFs); Q, K and V replicated per line (independent Sparser lines).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common.delay import delay
from vitaccel.rtl.common.requant import SHIFT_WIDTH

from .accumulator import Accumulator
from .buffers import read_port, shared_buffers
from .csc_walker import CSCWalker
from .layouts import (CMD_FIELD_BITS, ERR_BAD_CMD, ERR_CSC, ERR_INDEX_RANGE, cmd_layout,
                      entry_word, glob_depth, lane_layout, run_layout, spmm_tag_layout)
from .line import MacLine
from .loader import RowLoader, WordLoader
from .normaliser import Normaliser
from .operand_fetch import OperandFetch
from .row_max import RowMax
from .score_writer import ScoreWriter
from .sddmm_issue import SddmmIssue
from .spmm_issue import DenserWalk, SparserPacker

__all__ = ["VitCoDCore", "cmd_layout", "entry_word", "ERR_BAD_CMD", "ERR_CSC",
           "ERR_INDEX_RANGE", "SPMM_DONE_LATENCY"]

#: Cycles from an engine's last SpMM issue for a row to the row's done bit: the operand fetch,
#: the MAC line's products, the accumulator (:data:`vitaccel.golden.vitcod.SPMM_DONE_LATENCY`
#: models the schedule with it).
SPMM_DONE_LATENCY = OperandFetch.SPMM_LATENCY + MacLine.PRODUCT_LATENCY + Accumulator.LATENCY


class VitCoDCore(wiring.Component):
    """ViTCoD Denser + Sparser engines (see the module docstring for the protocol).

    Takes the unit's validated :class:`vitaccel.units.vitcod.Config` (``lines``,
    ``macs_per_line``, ``n_max``, ``d_max``, ``g_max``, ``nnz_max``, ``dense_groups_max``,
    ``normalisers``; the other fields are the host's).

    Ports: ``cmd``, ``q``, ``k``, ``v``, ``index``, ``dense_valid`` In streams; ``out`` Out
    stream of ``macs_per_line`` int8 lanes; plain inputs ``score_multiplier``/``score_shift``
    and ``out_multiplier``/``out_shift`` (from :func:`vitaccel.golden.vitcod.score_requant` /
    :func:`~vitaccel.golden.vitcod.out_requant`); status outputs ``busy``, ``error``,
    ``cycles`` (command accepted to last output), ``sddmm_cycles``, ``spmm_cycles``,
    ``dense_busy``/``sparse_busy`` (cycles in which the engine issued work).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        lanes = data.ArrayLayout(signed(8), cfg.macs_per_line)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout())),
            "q": In(stream.Signature(lanes)),
            "k": In(stream.Signature(lanes)),
            "v": In(stream.Signature(lanes)),
            "index": In(stream.Signature(unsigned(32))),
            "dense_valid": In(stream.Signature(unsigned(cfg.lines))),
            "out": Out(stream.Signature(lanes)),
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
        cfg, L = self.cfg, self.cfg.lines
        run = Signal(run_layout(cfg))
        cmd_ok, load_run = self._command_check(m, run)
        start, sddmm_start, spmm_start = Signal(), Signal(), Signal()
        loading, p1_run, p2_run, phase2 = Signal(), Signal(), Signal(), Signal()
        b = shared_buffers(m, cfg)

        def sub(name, component, **inputs):
            """Add ``component`` and drive its plain inputs."""
            m.submodules[name] = component
            m.d.comb += [getattr(component, port).eq(value) for port, value in inputs.items()]
            return component

        # LOAD
        loaders = []
        for name in "qkv":
            ldr = sub(f"{name}_loader", RowLoader(cfg), start=start, load=loading, run=run)
            wiring.connect(m, wiring.flipped(getattr(self, name)), ldr.i)
            wiring.connect(m, ldr.wr, b[name].write_port())
            loaders.append(ldr)
        dvl = sub("dv_loader", WordLoader(cfg), start=start, load=loading, run=run)
        wiring.connect(m, wiring.flipped(self.dense_valid), dvl.i)
        wiring.connect(m, dvl.wr, b["dv_wr"])
        walker = sub("csc_walker", CSCWalker(cfg), start=start, load=loading, run=run)
        wiring.connect(m, wiring.flipped(self.index), walker.index)
        for port in ("glob_wr", "scol_wr", "cptr_wr", "ent_wr", "pos_wr", "cnt_wr"):
            wiring.connect(m, getattr(walker, port), b[port])
        read_port(m, walker.scol_rd, b["scol"].read_port(domain="comb"))
        read_port(m, walker.cptr_rd, b["cptr"].read_port(domain="comb"))

        # issue: SDDMM, then SpMM
        issue = sub("sddmm_issue", SddmmIssue(cfg), start=sddmm_start, run=p1_run, params=run)
        acc = Accumulator(cfg)
        dense = sub("denser_walk", DenserWalk(cfg), start=spmm_start, run=p2_run, params=run,
                    handoff=acc.handoff)
        sparse = sub("sparser_packer", SparserPacker(cfg), start=spmm_start, run=p2_run,
                     params=run, handoff=acc.handoff, first_counts=walker.first_counts)
        read_port(m, sparse.cnt_rd, b["cnt"].read_port(domain="comb"))
        m.d.comb += [b["dv_rd"].addr.eq(issue.issue.d_word),
                     b["dense_scores"].read.addr.eq(dense.op.word)]
        m.d.comb += [b["banks"][k].read.addr.eq(sparse.bank_addr[k]) for k in range(L)]
        m.d.comb += [b["md_a"].addr.eq(sparse.row), b["ms_a"].addr.eq(sparse.row),
                     b["md_b"].addr.eq(sparse.row_b), b["ms_b"].addr.eq(sparse.row_b)]

        # the lines
        lines, busy = [], []
        for ln in range(L):
            fetch = sub(f"fetch{ln}", OperandFetch(cfg, ln), spmm=phase2, params=run,
                        sddmm=issue.issue, dense_op=dense.op, pair=sparse.pairs[ln],
                        dv=b["dv_rd"].data[ln],
                        dense_lane=data.ArrayLayout(lane_layout(), L)(
                            b["dense_scores"].read.data)[ln],
                        banks=Cat(*(k.read.data for k in b["banks"])))
            for ours, theirs in (("max_d", ("md", "ms")), ("max_a", ("md_a", "ms_a")),
                                 ("max_b", ("md_b", "ms_b"))):
                m.d.comb += [getattr(fetch, ours).dense.eq(b[theirs[0]].data),
                             getattr(fetch, ours).sparse.eq(b[theirs[1]].data)]
            for port in ("glob", "ent", "pos", "q", "k", "v"):
                wiring.connect(m, getattr(fetch, f"{port}_rd"), b[port].read_port())
            line = sub(f"line{ln}", MacLine(cfg), spmm=phase2, q=fetch.q, k=fetch.k, v=fetch.v,
                       lut=fetch.lut, hi=fetch.hi, eok=fetch.eok, score_in=fetch.score,
                       pair_in=fetch.pair_tag, score_multiplier=self.score_multiplier,
                       score_shift=self.score_shift)
            lines.append(line)
            busy += [fetch.busy, line.busy]

        # SDDMM results: score buffers and row maxima
        dword = delay(m, issue.issue.d_word, OperandFetch.SDDMM_LATENCY + MacLine.SCORE_LATENCY,
                      name="dense_word")
        writer = sub("score_writer", ScoreWriter(cfg), params=run, dword=dword,
                     scores=Cat(*(line.score for line in lines)))
        wiring.connect(m, writer.dense_wr, b["dense_scores"].write)
        for k in range(L):
            wiring.connect(m, writer.bank_wr[k], b["banks"][k].write)
        for name, lanes, upd in (("dense_max", L, writer.dense_max),
                                 ("sparse_max", 1, writer.sparse_max)):
            rmax = sub(name, RowMax(cfg, lanes), update=upd, clear=walker.clear, spmm=phase2,
                       spmm_row=dense.op.row)
            wiring.connect(m, rmax.wr, b[f"{name[0]}_wr"])
            wiring.connect(m, rmax.rd, b[f"m{name[0]}"])
            busy.append(rmax.busy)
        busy.append(writer.busy)

        # SpMM results: accumulator banks, normalisers
        tag = Signal(spmm_tag_layout(cfg))
        m.d.comb += [tag.d.eq(dense.op.op & phase2), tag.dlast.eq(dense.op.leave & phase2),
                     tag.dbank.eq(dense.op.row[0]), tag.dfirst.eq(dense.op.chunk == 0),
                     tag.dchunk.eq(dense.op.chunk), tag.send.eq(sparse.leave & phase2),
                     tag.sbank.eq(sparse.row[0])]
        norm = Normaliser(cfg)
        sub("accumulator", acc, start=spmm_start, params=run, slot_free=norm.slot_free,
            prod=Cat(*(line.prod for line in lines)), e=Cat(*(line.e for line in lines)),
            pair=Cat(*(line.pair_out for line in lines)),
            tag=delay(m, tag, OperandFetch.SPMM_LATENCY + MacLine.PRODUCT_LATENCY, name="tag"))
        sub("normaliser", norm, start=start, params=run, handoff=acc.handoff, row=acc.row,
            out_multiplier=self.out_multiplier, out_shift=self.out_shift)
        wiring.connect(m, norm.out, wiring.flipped(self.out))

        # the phase FSM and the status counters
        # Phase 1 has drained when no stage holds a valid bit. Registered, because that OR is
        # wide and fans out to every SpMM start register; with the issue of its own cycle in it,
        # nothing issued is missed (the drain takes one cycle more).
        p1_quiet = Signal()
        m.d.sync += p1_quiet.eq(~Cat(*busy).any() & ~issue.issue.d & ~issue.issue.s)
        count_error = Signal()     # the row counts do not sum to nnz
        bad_cmd = Signal()
        m.d.comb += self.error.eq(Cat(bad_cmd, walker.csc_error,
                                      walker.range_error | count_error))
        out_words = Signal(range(cfg.n_max * cfg.chunks_max + 1))
        with m.If(self.out.valid & self.out.ready):
            m.d.sync += out_words.eq(out_words + 1)
        m.d.sync += [self.cycles.eq(self.cycles + self.busy),
                     self.dense_busy.eq(self.dense_busy + (issue.issue.d | dense.op.op)),
                     self.sparse_busy.eq(self.sparse_busy + (issue.issue.s | sparse.go))]

        with m.FSM(name="control"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.next = "CMD_PRODUCTS"
            with m.State("CMD_PRODUCTS"):          # the command's products are registered
                m.next = "CMD_CHECK"
            with m.State("CMD_CHECK"):             # the checks and the run constants
                m.d.comb += load_run.eq(1)
                m.next = "CMD_ACCEPT"
            with m.State("CMD_ACCEPT"):
                with m.If(cmd_ok):
                    m.d.comb += start.eq(1)
                    m.d.sync += [count_error.eq(0), out_words.eq(0), self.cycles.eq(0),
                                 self.sddmm_cycles.eq(0), self.spmm_cycles.eq(0),
                                 self.dense_busy.eq(0), self.sparse_busy.eq(0)]
                    m.next = "LOAD"
                with m.Else():
                    m.d.sync += bad_cmd.eq(1)
                    m.next = "IDLE"
            with m.State("LOAD"):
                m.d.comb += [loading.eq(1), self.busy.eq(1)]
                with m.If(Cat(*(ldr.done for ldr in loaders), dvl.done, walker.done).all()):
                    m.d.comb += sddmm_start.eq(1)
                    with m.If(walker.count_mismatch):
                        m.d.sync += count_error.eq(1)
                    m.next = "SDDMM"
            with m.State("SDDMM"):
                m.d.comb += [p1_run.eq(1), self.busy.eq(1)]
                m.d.sync += self.sddmm_cycles.eq(self.sddmm_cycles + 1)
                with m.If(issue.done):
                    m.next = "SDDMM_DRAIN"
            with m.State("SDDMM_DRAIN"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += self.sddmm_cycles.eq(self.sddmm_cycles + 1)
                with m.If(p1_quiet):
                    m.d.comb += spmm_start.eq(1)
                    m.d.sync += phase2.eq(1)
                    m.next = "SPMM"
            with m.State("SPMM"):                  # both engines walk the rows
                m.d.comb += [self.busy.eq(1), p2_run.eq(1)]
                with m.If(~dense.more & ~sparse.more):
                    m.next = "FINISH"
                with m.Else():
                    m.d.sync += self.spmm_cycles.eq(self.spmm_cycles + 1)
            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.out.valid & self.out.ready & (out_words == run.out_last)):
                    m.d.sync += phase2.eq(0)
                    m.next = "IDLE"
        return m

    def _command_check(self, m, run):
        """The command, registered when taken; its products one cycle later; its check and the
        run constants (``run``, loaded while ``load_run``) one more cycle later. Returns the
        registered check and ``load_run``."""
        cfg, L = self.cfg, self.cfg.lines
        cmd = Signal(cmd_layout())
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += cmd.eq(self.cmd.payload)
        cover = Signal(2 * CMD_FIELD_BITS)             # dense_groups * lines_d
        dv_total = Signal(2 * CMD_FIELD_BITS)          # dense_groups * n: validity words
        out_total = Signal(2 * CMD_FIELD_BITS)         # n * chunks: output beats
        m.d.sync += [cover.eq(cmd.dense_groups * cmd.lines_d),
                     dv_total.eq(cmd.dense_groups * cmd.n), out_total.eq(cmd.n * cmd.chunks)]
        ok = Signal()
        m.d.sync += ok.eq(
            (cmd.n >= 1) & (cmd.n <= cfg.n_max) & (cmd.chunks >= 1)
            & (cmd.chunks <= cfg.chunks_max) & (cmd.g <= cmd.n) & (cmd.g <= glob_depth(cfg))
            & (cmd.nnz <= cfg.nnz_max) & (cmd.lines_d <= L)
            # dense_groups == ceil(g / lines_d): cover >= g > (dense_groups - 1) * lines_d
            & Mux(cmd.g == 0, cmd.dense_groups == 0,
                  (cmd.lines_d >= 1) & (cmd.dense_groups <= cfg.dense_groups_max)
                  & (cover >= cmd.g) & (cover < cmd.g + cmd.lines_d))
            & ((cmd.nnz == 0) | (cmd.lines_d < L)))
        load_run = Signal()
        ld = cmd.lines_d[:len(run.ld)]
        with m.If(load_run):
            m.d.sync += [
                run.n.eq(cmd.n), run.f.eq(cmd.chunks), run.g.eq(cmd.g), run.nnz.eq(cmd.nnz),
                run.ld.eq(ld), run.ls.eq(L - ld), run.dgroups.eq(cmd.dense_groups),
                run.s_period.eq(Mux(L - ld > cmd.chunks, L - ld, cmd.chunks)),
                run.s_win.eq(Mux(L - ld < cmd.chunks, L - ld, cmd.chunks)),
                run.ncols.eq(cmd.n - cmd.g),
                run.f_last.eq(cmd.chunks - 1), run.n_last.eq(cmd.n - 1),
                run.dv_last.eq(dv_total - 1), run.out_last.eq(out_total - 1),
                run.dense_lines.eq(Cat(*(ln < ld for ln in range(L)))),
            ]
        return ok, load_run
