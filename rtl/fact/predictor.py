"""FACT eager attention predictor: LO projections, LO scores, row top-k, one-hot rows, K/V keep
masks and token importance, with shifts and adds only (no multiplier anywhere, so zero DSPs).

Golden twin: :func:`vitaccel.golden.fact.predict` (bit for bit).

Protocol (one problem per ``cmd`` beat; sizes and thresholds are run-time registers):

1. ``cmd`` {n, row_words = D/lanes, head_words = d/lanes, k, t_int, importance_threshold}.
   A command outside the configured maxima (or with ``row_words != heads * head_words``, or
   ``k > n``) raises the sticky ``error`` flag and is dropped without consuming data.
2. Loads, concurrently: ``x`` (N x D int8, row-major), ``wq`` and ``wk`` (D x D int8 sent
   **column by column**, i.e. W^T row-major, so a column of W fills memory words exactly as a row
   of X does), ``bq`` and ``bk`` (D int32 each, at the X.W accumulator scale). Each int8 is turned
   into its LO code on the way into the buffers; the int8 values are not kept.
3. Per head h: Q~ and K~ of all N tokens (two projection engines of ``lanes`` LO products per
   cycle fed by the same X word, bias added, saturated to ``qk_bits``, LO-coded into the Q and K
   buffers). Then row by row: the N scores of row i (a second, wide engine) into the streaming
   top-k, the one-hot decision and:

   * ``select``: ``k`` beats per row {key, onehot, last}, best score first (ties: lower key),
     one-hot or not (a fixed beat count keeps the consumer simple; it reads ``onehot`` on the
     first beat, which is always the row's argmax). Rows leave as soon as they are decided, so
     later compute can overlap prediction.
   * while a row's beats leave, its contribution (all k keys, or only the argmax of a one-hot
     row) is ORed into the head's keep mask and counted into the importance memory.

   After the last row of a head: one ``keep`` beat (``n_max`` bits, bit j = keep_kv[h, j]).
4. After the last head: ``importance``: N beats {count, high} (high = count >= threshold).

Schedule (no stalls): per head ``N*d*D/lanes`` cycles of projection, then per row
``N*d/lanes`` cycles of scores plus the ``k`` select beats and a short pipeline drain (see
``vitaccel.units.fact.expected_compute_cycles``). The engines are fixed-latency pipelines; only
the stream ports wait for their partners.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.golden.fact import acc_bits, score_bits
from vitaccel.rtl.common.banked import BankedMemory

from .codes import code_layout, encode, encode_magnitude, sign_magnitude
from .dot import LODotEngine
from .topk import TopKSorter

__all__ = ["FACTPredictor", "cmd_layout", "select_layout", "importance_layout"]


def cmd_layout(n_max, d_model_max, heads, lanes, k_max, qk_bits):
    d_max = d_model_max // heads
    return data.StructLayout({
        "n": range(n_max + 1),
        "row_words": range(d_model_max // lanes + 1),
        "head_words": range(d_max // lanes + 1),
        "k": range(k_max + 1),
        "t_int": unsigned(score_bits(qk_bits, d_max) - 1),
        "importance_threshold": range(heads * n_max + 2),
    })


def select_layout(n_max):
    return data.StructLayout({"key": range(n_max), "onehot": 1, "last": 1})


def importance_layout(n_max, heads):
    return data.StructLayout({"count": range(heads * n_max + 1), "high": 1})


class FACTPredictor(wiring.Component):
    """The predictor (protocol in the module docstring).

    Parameters: ``n_max`` tokens, ``d_model_max`` model width, ``heads`` (static), ``lanes`` LO
    products per engine and cycle (a power of two; D and d must be multiples of it at run time),
    ``k_max`` entries of the top-k (>= 2, for the one-hot rule), ``mantissa_bits`` kept after the
    leading one, ``qk_bits`` saturation width of Q~ / K~.
    Ports: ``cmd``, ``x``, ``wq``, ``wk``, ``bq``, ``bk`` in; ``select``, ``keep``,
    ``importance`` out (all streams); ``busy``, sticky ``error`` and ``cycles`` (cycles after the
    loads, for the last/current command).
    """

    def __init__(self, n_max=197, d_model_max=192, heads=3, lanes=16, k_max=40,
                 mantissa_bits=0, qk_bits=24):
        for name, value, lo in (("n_max", n_max, 1), ("d_model_max", d_model_max, 1),
                                ("heads", heads, 1), ("lanes", lanes, 1), ("k_max", k_max, 2),
                                ("mantissa_bits", mantissa_bits, 0), ("qk_bits", qk_bits, 8)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"FACTPredictor.{name} must be an integer >= {lo}, got {value!r}")
        if lanes & (lanes - 1):
            raise ValueError(f"FACTPredictor.lanes must be a power of two, got {lanes}")
        if d_model_max % (heads * lanes):
            raise ValueError(f"FACTPredictor.d_model_max ({d_model_max}) must be a multiple of "
                             f"heads * lanes ({heads} * {lanes})")
        self.n_max, self.d_model_max, self.heads, self.lanes = n_max, d_model_max, heads, lanes
        self.k_max, self.mantissa_bits, self.qk_bits = k_max, mantissa_bits, qk_bits
        self.d_max = d_model_max // heads
        self.row_words_max = d_model_max // lanes
        self.head_words_max = self.d_max // lanes
        self.acc_width = acc_bits(d_model_max)
        self.score_width = score_bits(qk_bits, self.d_max)
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(n_max, d_model_max, heads, lanes, k_max, qk_bits))),
            "x": In(stream.Signature(signed(8))),
            "wq": In(stream.Signature(signed(8))),
            "wk": In(stream.Signature(signed(8))),
            "bq": In(stream.Signature(signed(32))),
            "bk": In(stream.Signature(signed(32))),
            "select": Out(stream.Signature(select_layout(n_max))),
            "keep": Out(stream.Signature(unsigned(n_max))),
            "importance": Out(stream.Signature(importance_layout(n_max, heads))),
            "busy": Out(1),
            "error": Out(1),
            "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        P, H, MB = self.lanes, self.heads, self.mantissa_bits
        lg_p = P.bit_length() - 1
        c8 = code_layout(8, MB)
        cw = code_layout(self.qk_bits, MB)
        w8, ww = c8.size, cw.size
        rw_max, hw_max = self.row_words_max, self.head_words_max

        # --- buffers --------------------------------------------------------------------------
        # The engines' operand buffers answer in BankedMemory.LATENCY = 2 cycles: each block RAM
        # output is registered beside its block before the depth multiplexer (see banked.py); on
        # the ECP5 that register is the block's own (their writes come from registers, or one
        # adder after them, so nothing long reaches the blocks' write pins).
        outreg = dict(ecp5_output_register=True)
        m.submodules.x_mem = x_mem = BankedMemory(P * w8, self.n_max * rw_max, granularity=w8, **outreg)
        m.submodules.wq_mem = wq_mem = BankedMemory(P * w8, self.d_model_max * rw_max, granularity=w8,
                                                     **outreg)
        m.submodules.wk_mem = wk_mem = BankedMemory(P * w8, self.d_model_max * rw_max, granularity=w8,
                                                     **outreg)
        m.submodules.bq_mem = bq_mem = Memory(shape=signed(32), depth=self.d_model_max, init=[])
        m.submodules.bk_mem = bk_mem = Memory(shape=signed(32), depth=self.d_model_max, init=[])
        m.submodules.k_mem = k_mem = BankedMemory(P * ww, self.n_max * hw_max, granularity=ww, **outreg)
        m.submodules.q_mem = q_mem = BankedMemory(P * ww, self.n_max * hw_max, granularity=ww, **outreg)
        count_width = (H * self.n_max).bit_length()
        # a BankedMemory for its registered output: the block RAM output ran 5.5 ns across the
        # die to the update register (the ULX3S critical path at 83.6 MHz)
        m.submodules.imp_mem = imp_mem = BankedMemory(count_width, self.n_max, **outreg)

        x_wr, x_rd = x_mem.write, x_mem.read
        wq_wr, wq_rd = wq_mem.write, wq_mem.read
        wk_wr, wk_rd = wk_mem.write, wk_mem.read
        bq_wr, bq_rd = bq_mem.write_port(), bq_mem.read_port()
        bk_wr, bk_rd = bk_mem.write_port(), bk_mem.read_port()
        k_wr, k_rd = k_mem.write, k_mem.read
        q_wr, q_rd = q_mem.write, q_mem.read
        # Not transparent: the read-modify-write below never reads an address within three
        # cycles of writing it (the keys of a row are distinct, and rows are >= 10 cycles apart),
        # and a bypass mux would lengthen the block RAM output path.
        imp_wr, imp_rd = imp_mem.write, imp_mem.read

        # --- command registers ----------------------------------------------------------------
        # A command is checked while it waits (IDLE registers the verdict without taking it: a
        # stream payload holds until taken) and taken and accepted or rejected a cycle later from
        # that register (CMD_DECIDE): the field compares once fed the enables of every command
        # register and counter directly (the 95.0 MHz ULX3S path, 10.5 ns). No copy of the
        # command is kept, which the iCEBreaker build has no cells for.
        cmd = self.cmd.payload
        cmd_ok_r = Signal()
        n_last = Signal(range(self.n_max))            # n - 1
        n_reg = Signal(range(self.n_max + 1))
        rw_last = Signal(range(rw_max))               # row_words - 1
        rw_reg = Signal(range(rw_max + 1))
        hw_last = Signal(range(hw_max))               # head_words - 1
        hw_reg = Signal(range(hw_max + 1))
        k_last = Signal(range(self.k_max))
        t_int = Signal.like(cmd.t_int)
        imp_thr = Signal.like(cmd.importance_threshold)
        heads_x_hw = sum((cmd.head_words << b) for b in range(H.bit_length()) if H >> b & 1)
        cmd_ok = ((cmd.n >= 1) & (cmd.n <= self.n_max)
                  & (cmd.head_words >= 1) & (cmd.head_words <= hw_max)
                  & (cmd.row_words == heads_x_hw)
                  & (cmd.k >= 1) & (cmd.k <= self.k_max) & (cmd.k <= cmd.n))

        # --- load: int8 -> LO code on the way in ----------------------------------------------
        # The load streams' ready comes from registers (``loading``, the done flags), not from
        # the sequencer's state decode: state -> ready -> accept -> loader counters, routed
        # across the die, was the ULX3S critical path at 72.1 MHz.
        loading = Signal()                            # the LOAD state, as a register
        def loader(name, port, wr, depth, rows_last):
            """Counters for a stream of rows of row_words*lanes int8 values into word memory."""
            lane = Signal(range(P), name=f"{name}_lane")
            addr = Signal(range(depth + 1), name=f"{name}_addr")
            word = Signal(range(rw_max), name=f"{name}_word")
            row = Signal(range(self.d_model_max + self.n_max), name=f"{name}_row")
            done = Signal(name=f"{name}_done")
            code = encode(m, port.payload, MB, name=f"{name}_code")
            # The write is registered: the stream's accept (the host link's holding register
            # and this loader's ready) drove the buffer's write enables at the block RAMs across
            # the die, and the counters between them (75.0 MHz on the ULX3S). A value lands one
            # cycle after its beat; the sequencer leaves LOAD on `done` one cycle later still.
            wr_en = Signal(P, name=f"{name}_wr_en")
            wr_addr = Signal.like(addr, name=f"{name}_wr_addr")
            wr_code = Signal(len(code.as_value()), name=f"{name}_wr_code")
            m.d.comb += [wr.addr.eq(wr_addr), wr.data.eq(Cat(*[wr_code] * P)), wr.en.eq(wr_en)]
            m.d.sync += [wr_addr.eq(addr), wr_code.eq(code.as_value())]
            reset = [lane.eq(0), addr.eq(0), word.eq(0), row.eq(0), done.eq(0)]
            accept = Signal(name=f"{name}_accept")
            m.d.comb += accept.eq(port.valid & port.ready)
            m.d.sync += wr_en.eq(Mux(accept, 1 << lane, 0))
            with m.If(accept):
                m.d.sync += lane.eq(lane + 1)
                with m.If(lane == P - 1):
                    m.d.sync += [addr.eq(addr + 1), word.eq(word + 1)]
                    with m.If(word == rw_last):
                        m.d.sync += [word.eq(0), row.eq(row + 1)]
                        with m.If(row == rows_last):
                            m.d.sync += done.eq(1)
            return done, reset

        d_last = Signal(range(self.d_model_max))      # D - 1 (rows of W^T)
        x_done, x_reset = loader("x", self.x, x_wr, x_mem.depth, n_last)
        wq_done, wq_reset = loader("wq", self.wq, wq_wr, wq_mem.depth, d_last)
        wk_done, wk_reset = loader("wk", self.wk, wk_wr, wk_mem.depth, d_last)

        bq_addr = Signal(range(self.d_model_max + 1))
        bk_addr = Signal(range(self.d_model_max + 1))
        bq_done, bk_done = Signal(), Signal()
        m.d.comb += [bq_wr.addr.eq(bq_addr), bq_wr.data.eq(self.bq.payload),
                     bk_wr.addr.eq(bk_addr), bk_wr.data.eq(self.bk.payload)]
        with m.If(self.bq.valid & self.bq.ready):
            m.d.comb += bq_wr.en.eq(1)
            m.d.sync += bq_addr.eq(bq_addr + 1)
            with m.If(bq_addr == d_last):
                m.d.sync += bq_done.eq(1)
        with m.If(self.bk.valid & self.bk.ready):
            m.d.comb += bk_wr.en.eq(1)
            m.d.sync += bk_addr.eq(bk_addr + 1)
            with m.If(bk_addr == d_last):
                m.d.sync += bk_done.eq(1)

        m.d.comb += [self.x.ready.eq(loading & ~x_done), self.wq.ready.eq(loading & ~wq_done),
                     self.wk.ready.eq(loading & ~wk_done), self.bq.ready.eq(loading & ~bq_done),
                     self.bk.ready.eq(loading & ~bk_done)]

        # --- projection engines: LO(X) . LO(W), then + b, saturate, LO-code ----------------
        # Q~ and K~ of a token are computed together: one X word feeds both engines, each with
        # its own W word, so the projections of a head cost N * d * D / lanes cycles in all.
        proj_tag = data.StructLayout({"waddr": range(max(self.n_max * hw_max, 2)),
                                      "lane": range(max(P, 2)), "col": range(self.d_model_max)})
        m.submodules.proj_q = proj_q = LODotEngine(P, 8, 8, MB, self.acc_width, proj_tag.size)
        m.submodules.proj_k = proj_k = LODotEngine(P, 8, 8, MB, self.acc_width, proj_tag.size)

        iss_valid = Signal()          # issue this cycle (memory addresses presented)
        iss_first, iss_last = Signal(), Signal()
        iss_tag = Signal(proj_tag)

        def to_operands(name, valid, first, last, tag):
            """The issue's valid/first/last/tag delayed to meet the operand buffers' read data;
            returns the delayed four and "a beat is in flight"."""
            d, in_flight = BankedMemory.aligned(
                m, {"valid": valid, "first": first, "last": last, "tag": tag}, name)
            return d["valid"], d["first"], d["last"], d["tag"], in_flight

        d_valid, d_first, d_last_beat, d_tag, proj_reading = to_operands(
            "proj_rd", iss_valid, iss_first, iss_last, iss_tag)
        for engine, w_rd in ((proj_q, wq_rd), (proj_k, wk_rd)):
            m.d.comb += [
                engine.in_valid.eq(d_valid), engine.in_first.eq(d_first),
                engine.in_last.eq(d_last_beat), engine.in_tag.eq(d_tag.as_value()),
                engine.in_a.as_value().eq(x_rd.data), engine.in_b.as_value().eq(w_rd.data),
            ]
        # Both engines run in lock step, so one tag path serves both. Post-processing:
        # r1 (bias read in flight) -> rb (bias registered: a block RAM output is slow on ECP5
        # and fed the bias adder directly, the ULX3S critical path) -> r2 (biased, saturated)
        # -> rm (sign and magnitude registered) -> r3 (LO code registered) -> written to the
        # buffer. The code's negate, LOD and shift once fed the block RAM's data pins directly:
        # with a 5.5 ns route to a distant block that was the 71.8 MHz ULX3S critical path; in
        # one stage from r2 they were 10.9 ns (91.9 MHz), the negation's carry chain included.
        out_tag = Signal(proj_tag)
        m.d.comb += out_tag.eq(proj_q.out_tag)
        m.d.comb += [bq_rd.addr.eq(out_tag.col), bk_rd.addr.eq(out_tag.col)]
        r1_valid, r1_tag, r2_valid, r2_tag = Signal(), Signal(proj_tag), Signal(), Signal(proj_tag)
        rb_valid, rb_tag = Signal(), Signal(proj_tag)
        rm_valid, rm_tag = Signal(), Signal(proj_tag)
        r3_valid, r3_tag = Signal(), Signal(proj_tag)
        m.d.sync += [r1_valid.eq(proj_q.out_valid), r1_tag.eq(out_tag),
                     rb_valid.eq(r1_valid), rb_tag.eq(r1_tag),
                     r2_valid.eq(rb_valid), r2_tag.eq(rb_tag),
                     rm_valid.eq(r2_valid), rm_tag.eq(r2_tag),
                     r3_valid.eq(rm_valid), r3_tag.eq(rm_tag)]
        hi, lo = (1 << (self.qk_bits - 1)) - 1, -(1 << (self.qk_bits - 1))
        for name, engine, b_rd, wr in (("q", proj_q, bq_rd, q_wr), ("k", proj_k, bk_rd, k_wr)):
            r1_sum = Signal(signed(self.acc_width), name=f"{name}_r1_sum")
            rb_sum = Signal(signed(self.acc_width), name=f"{name}_rb_sum")
            rb_bias = Signal(signed(32), name=f"{name}_rb_bias")
            m.d.sync += [r1_sum.eq(engine.out_sum), rb_sum.eq(r1_sum), rb_bias.eq(b_rd.data)]
            biased = Signal(signed(max(self.acc_width, 32) + 1), name=f"{name}_biased")
            m.d.comb += biased.eq(rb_sum + rb_bias)
            r2_value = Signal(signed(self.qk_bits), name=f"{name}_r2_value")
            m.d.sync += r2_value.eq(Mux(biased > hi, hi, Mux(biased < lo, lo, biased)))
            sign, magnitude = sign_magnitude(m, r2_value, name=f"{name}_code")
            rm_sign = Signal(name=f"{name}_rm_sign")
            rm_magnitude = Signal.like(magnitude, name=f"{name}_rm_magnitude")
            m.d.sync += [rm_sign.eq(sign), rm_magnitude.eq(magnitude)]
            code = encode_magnitude(m, rm_sign, rm_magnitude, MB, name=f"{name}_code")
            r3_code = Signal.like(code, name=f"{name}_r3_code")
            m.d.sync += r3_code.eq(code)
            m.d.comb += [wr.addr.eq(r3_tag.waddr), wr.data.eq(Cat(*[r3_code.as_value()] * P))]
            with m.If(r3_valid):
                m.d.comb += wr.en.eq(1 << r3_tag.lane)
        proj_busy = (proj_reading | proj_q.active | r1_valid | rb_valid | r2_valid | rm_valid
                     | r3_valid)

        # --- score engine: LO(Q~) . LO(K~)^T into the top-k ----------------------------------
        m.submodules.score = score = LODotEngine(P, self.qk_bits, self.qk_bits, MB,
                                                 self.score_width, max(self.n_max - 1, 1).bit_length())
        m.submodules.topk = topk = TopKSorter(self.k_max, self.score_width,
                                              max(self.n_max - 1, 1).bit_length())
        s_iss_valid, s_iss_first, s_iss_last = Signal(), Signal(), Signal()
        s_iss_key = Signal(range(self.n_max))
        s_d_valid, s_d_first, s_d_last, s_d_key, score_reading = to_operands(
            "score_rd", s_iss_valid, s_iss_first, s_iss_last, s_iss_key)
        m.d.comb += [
            score.in_valid.eq(s_d_valid), score.in_first.eq(s_d_first),
            score.in_last.eq(s_d_last), score.in_tag.eq(s_d_key),
            score.in_a.as_value().eq(q_rd.data), score.in_b.as_value().eq(k_rd.data),
            topk.insert.eq(score.out_valid), topk.in_score.eq(score.out_sum),
            topk.in_index.eq(score.out_tag),
        ]
        score_busy = score_reading | score.active | topk.busy

        # --- loop counters --------------------------------------------------------------------
        head = Signal(range(H))
        head_wbase = Signal(range(self.d_model_max * rw_max + 1))   # W word of the head's col 0
        head_col = Signal(range(self.d_model_max + 1))
        next_wbase = Signal.like(head_wbase)
        next_col = Signal.like(head_col)
        t = Signal(range(rw_max))                  # input word within a row of X / column of W
        out_word = Signal(range(hw_max))           # output column word within the head
        out_lane = Signal(range(P))
        col = Signal(range(self.d_model_max + 1))  # absolute output column (bias address)
        xbase = Signal(range(self.n_max * rw_max + 1))
        kbase = Signal(range(self.n_max * hw_max + 1))
        tok = Signal(range(self.n_max))
        # PROJECT's loop ends as flip-flops (t == rw_last, out_word == hw_last, tok == n_last),
        # each set a cycle ahead from its counter's next value: the three register compares
        # in one cycle before the state register's enable were the 83.7 MHz ULX3S critical path
        t_end, word_end, tok_end = Signal(), Signal(), Signal()
        row = Signal(range(self.n_max))
        row_qbase = Signal.like(kbase)             # Q~ word of the current row
        key = Signal(range(self.n_max))
        st = Signal(range(max(hw_max, TopKSorter.INTERVAL)))   # cycle within a key's scoring
        # a key's cycles - 1: its words, padded to the interval the top-k sorter needs
        st_last = Signal.like(st)
        rank = Signal(range(self.k_max))
        onehot = Signal()
        gap = Signal(unsigned(self.score_width))      # best - second best >= 0
        second_valid = Signal()
        keep = Signal(self.n_max)
        clr = Signal(range(self.n_max + 1))
        imp_next = Signal(range(self.n_max + 1))
        # The importance RAM's read address is always this register and its write address and
        # enable come from registers only: the select handshake -> read address path (through
        # the sequencer state and the one-hot decision) was the ULX3S critical path.
        imp_raddr = Signal(range(self.n_max))
        clearing = Signal()                           # LOAD: zeroing the importance counters
        imp_valid = Signal()
        imp_count = Signal(count_width)              # registered importance beat
        imp_high = Signal()
        # importance update pipeline, one beat per select beat: the handshake loads imp_raddr
        # (UPD: the block RAM reads it), the count reaches the bank register (UPD2), and UPD3
        # writes it back + inc. Every beat goes through, inc = 0 for a one-hot row's other keys,
        # so the pipeline's timing (and the cycle count) does not depend on the data.
        upd_valid, upd_inc = Signal(), Signal()
        upd2_valid, upd2_addr, upd2_inc = Signal(), Signal(range(self.n_max)), Signal()
        upd3_valid, upd3_addr, upd3_inc = Signal(), Signal(range(self.n_max)), Signal()
        cycles = Signal(32)
        m.d.comb += self.cycles.eq(cycles)
        # The operand buffers' read addresses are registers that step with the loop counters
        # (x_addr = xbase + t, w_addr = the column's W base + t, q_addr = row_qbase + st,
        # k_addr = the key's K~ base + st): the base adders in front of the bank select and the block RAM address were
        # the ULX3S critical path (10.3 of 12.6 ns routing).
        x_addr = Signal.like(xbase)
        w_addr = Signal.like(head_wbase)
        q_addr = Signal.like(kbase)
        k_addr = Signal.like(kbase)

        m.d.comb += [
            x_rd.addr.eq(x_addr), wq_rd.addr.eq(w_addr), wk_rd.addr.eq(w_addr),
            iss_first.eq(t == 0), iss_last.eq(t == rw_last),
            iss_tag.waddr.eq(kbase + out_word),
            iss_tag.lane.eq(out_lane), iss_tag.col.eq(col),
            q_rd.addr.eq(q_addr), k_rd.addr.eq(k_addr),
            s_iss_first.eq(st == 0), s_iss_last.eq(st == hw_last), s_iss_key.eq(key),
        ]

        # importance read-modify-write (see upd_valid)
        m.d.comb += imp_rd.addr.eq(imp_raddr)
        m.d.sync += [upd_valid.eq(0),
                     upd2_valid.eq(upd_valid), upd2_addr.eq(imp_raddr), upd2_inc.eq(upd_inc),
                     upd3_valid.eq(upd2_valid), upd3_addr.eq(upd2_addr), upd3_inc.eq(upd2_inc)]
        with m.If(upd3_valid):          # imp_rd.data: the count read in UPD (LATENCY 2)
            m.d.comb += [imp_wr.addr.eq(upd3_addr), imp_wr.data.eq(imp_rd.data + upd3_inc),
                         imp_wr.en.eq(1)]
        with m.Elif(clearing):                  # never together: clearing ends before any select
            m.d.comb += [imp_wr.addr.eq(clr), imp_wr.data.eq(0), imp_wr.en.eq(1)]
            m.d.sync += clr.eq(clr + 1)
            with m.If(clr == n_last):
                m.d.sync += clearing.eq(0)

        sel = self.select.payload
        # The row's top-k keys, copied from the sorter once per row and shifted down one entry per
        # select beat, so the beat's key is always entry 0 of a register: no k_max-way mux on
        # rank between a flip-flop and the keep decoder / importance RAM address (that mux was
        # the ULX3S critical path), and no view indexed by a Value (which would emit a $mul).
        ranked = Array(Signal(topk.in_index.shape(), name=f"ranked_{e}") for e in range(self.k_max))
        m.d.comb += [sel.key.eq(ranked[0]), sel.onehot.eq(onehot),
                     sel.last.eq(rank == k_last)]
        imp = self.importance.payload
        m.d.comb += [imp.count.eq(imp_count), imp.high.eq(imp_high),
                     self.importance.valid.eq(imp_valid), self.keep.payload.eq(keep)]

        # The row's DECIDE and SELECT states as flip-flops of their own: the enables of the
        # ranked keys (k_max x index bits) and of the select beat's bookkeeping then hang off one
        # register and the output's ready, not off a decode of the state register (five LUT
        # levels and 8.7 ns of routing to `ranked_0`, the 96.5 MHz ULX3S critical path).
        deciding = Signal()      # == fsm.ongoing("DECIDE")
        selecting = Signal()     # == fsm.ongoing("SELECT")
        # ROW's clear of the sorter likewise: it enables every entry of the sorter (the 99.5 MHz
        # ULX3S critical path, state register -> clear -> a 3.7 ns spread to the entries)
        row_start = Signal()     # == fsm.ongoing("ROW")
        m.d.sync += [deciding.eq(0), row_start.eq(0)]
        m.d.comb += topk.clear.eq(row_start)
        with m.If(deciding):
            # The gap and its comparison are two ~50-bit carry chains: one cycle each.
            m.d.sync += [gap.eq(topk.score[0] - topk.score[1]), second_valid.eq(topk.valid[1])]
            m.d.sync += [ranked[e].eq(topk.index[e]) for e in range(self.k_max)]
        m.d.comb += self.select.valid.eq(selecting)
        with m.If(selecting & self.select.ready):
            m.d.sync += rank.eq(rank + 1)
            m.d.sync += [ranked[e].eq(ranked[e + 1]) for e in range(self.k_max - 1)]
            # a one-hot row counts (and keeps) its argmax only
            counted = ~onehot | (rank == 0)
            m.d.sync += [upd_valid.eq(1), upd_inc.eq(counted), imp_raddr.eq(sel.key)]
            with m.If(counted):
                m.d.sync += keep.bit_select(sel.key, 1).eq(1)

        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(self.cmd.valid):
                    m.d.sync += cmd_ok_r.eq(cmd_ok)
                    m.next = "CMD_DECIDE"

            with m.State("CMD_DECIDE"):
                m.d.comb += self.cmd.ready.eq(1)      # the command checked in IDLE, still valid
                with m.If(cmd_ok_r):
                    m.d.sync += [
                        n_reg.eq(cmd.n), n_last.eq(cmd.n - 1), rw_reg.eq(cmd.row_words),
                        rw_last.eq(cmd.row_words - 1), hw_reg.eq(cmd.head_words),
                        hw_last.eq(cmd.head_words - 1), k_last.eq(cmd.k - 1),
                        st_last.eq(Mux(cmd.head_words < TopKSorter.INTERVAL,
                                       TopKSorter.INTERVAL - 1, cmd.head_words - 1)),
                        t_int.eq(cmd.t_int), imp_thr.eq(cmd.importance_threshold),
                        d_last.eq((cmd.row_words << lg_p) - 1),
                        *x_reset, *wq_reset, *wk_reset,
                        bq_addr.eq(0), bk_addr.eq(0), bq_done.eq(0), bk_done.eq(0),
                        clr.eq(0), clearing.eq(1), loading.eq(1), cycles.eq(0), head.eq(0),
                        head_wbase.eq(0), head_col.eq(0),
                    ]
                    m.next = "LOAD"
                with m.Else():
                    m.d.sync += self.error.eq(1)
                    m.next = "IDLE"

            with m.State("LOAD"):
                # the importance counters are zeroed meanwhile (see clearing)
                with m.If(x_done & wq_done & wk_done & bq_done & bk_done & ~clearing):
                    m.d.sync += loading.eq(0)
                    m.next = "HEAD"

            with m.State("HEAD"):
                m.d.sync += [t.eq(0), out_word.eq(0), out_lane.eq(0),
                             col.eq(head_col), xbase.eq(0), kbase.eq(0),
                             x_addr.eq(0), w_addr.eq(head_wbase),
                             tok.eq(0), row.eq(0), row_qbase.eq(0), keep.eq(0),
                             t_end.eq(rw_last == 0), word_end.eq(hw_last == 0),
                             tok_end.eq(n_last == 0)]
                m.next = "PROJECT"

            with m.State("PROJECT"):
                # One X word x one Wq word and one Wk word per cycle; d output columns per token,
                # each rw words deep.
                m.d.comb += iss_valid.eq(1)
                # the next column's W word follows this one's last: w_addr + 1 either way
                m.d.sync += [t.eq(t + 1), x_addr.eq(x_addr + 1), w_addr.eq(w_addr + 1),
                             t_end.eq(t + 1 == rw_last)]
                with m.If(t_end):
                    m.d.sync += [t.eq(0), out_lane.eq(out_lane + 1), col.eq(col + 1),
                                 x_addr.eq(xbase), t_end.eq(rw_last == 0)]
                    with m.If(out_lane == P - 1):
                        m.d.sync += [out_lane.eq(0), out_word.eq(out_word + 1),
                                     word_end.eq(out_word + 1 == hw_last)]
                        with m.If(word_end):          # token done: every head column
                            # the next token's X row follows this one's last word
                            m.d.sync += [out_word.eq(0), col.eq(head_col),
                                         w_addr.eq(head_wbase), x_addr.eq(x_addr + 1),
                                         xbase.eq(xbase + rw_reg), kbase.eq(kbase + hw_reg),
                                         tok.eq(tok + 1), tok_end.eq(tok + 1 == n_last),
                                         word_end.eq(hw_last == 0),
                                         next_wbase.eq(w_addr + 1), next_col.eq(col + 1)]
                            with m.If(tok_end):
                                m.next = "PROJECT_DRAIN"

            with m.State("PROJECT_DRAIN"):
                with m.If(~proj_busy):
                    m.d.sync += row_start.eq(1)
                    m.next = "ROW"

            with m.State("ROW"):
                m.d.sync += [key.eq(0), st.eq(0), k_addr.eq(0), q_addr.eq(row_qbase)]
                m.next = "SCORE"          # the sorter clears meanwhile (`row_start`)

            with m.State("SCORE"):
                # one word per cycle; a key takes at least the top-k sorter's interval, so
                # one-word keys (d == lanes) idle a cycle after their word
                issuing = Signal()
                m.d.comb += [issuing.eq(st <= hw_last), s_iss_valid.eq(issuing)]
                m.d.sync += st.eq(st + 1)
                with m.If(issuing):
                    # the next key's K~ word follows this one's last: k_addr + 1 either way
                    m.d.sync += [q_addr.eq(q_addr + 1), k_addr.eq(k_addr + 1)]
                with m.If(st == st_last):
                    m.d.sync += [st.eq(0), key.eq(key + 1),
                                 q_addr.eq(row_qbase)]
                    with m.If(key == n_last):
                        m.next = "SCORE_DRAIN"

            with m.State("SCORE_DRAIN"):
                with m.If(~score_busy):
                    m.d.sync += deciding.eq(1)
                    m.next = "DECIDE"

            with m.State("DECIDE"):          # the ranked keys and the gap load (`deciding`)
                m.next = "DECIDE_COMPARE"

            with m.State("DECIDE_COMPARE"):
                m.d.sync += [onehot.eq(~second_valid | (gap > t_int)), rank.eq(0),
                             selecting.eq(1)]
                m.next = "SELECT"

            with m.State("SELECT"):          # one beat per ready (`selecting`, above)
                with m.If(self.select.ready):
                    with m.If(sel.last):
                        m.d.sync += [row.eq(row + 1), row_qbase.eq(row_qbase + hw_reg),
                                     selecting.eq(0)]
                        with m.If(row == n_last):
                            m.next = "KEEP"
                        with m.Else():
                            m.d.sync += row_start.eq(1)
                            m.next = "ROW"

            with m.State("KEEP"):
                m.d.comb += self.keep.valid.eq(1)
                with m.If(self.keep.ready):
                    with m.If(head == H - 1):
                        m.d.sync += [imp_next.eq(0), imp_valid.eq(0), imp_raddr.eq(0)]
                        m.next = "IMPORTANCE"
                    with m.Else():
                        m.d.sync += [head.eq(head + 1), head_wbase.eq(next_wbase),
                                     head_col.eq(next_col)]
                        m.next = "HEAD"

            with m.State("IMPORTANCE"):
                # One beat per four cycles (block RAM read, bank register, compare, send): the
                # block RAM output only ever meets a flip-flop, never the host's logic. N beats
                # once per command. imp_raddr already holds imp_next (set by KEEP and by the
                # previous SEND); the read that counts is this state's, after the last update.
                with m.If(imp_next == n_reg):
                    m.next = "IDLE"
                with m.Elif(~upd_valid & ~upd2_valid & ~upd3_valid):   # the last update landed
                    m.next = "IMPORTANCE_READ"

            with m.State("IMPORTANCE_READ"):
                m.next = "IMPORTANCE_COMPARE"

            with m.State("IMPORTANCE_COMPARE"):
                m.d.sync += [imp_count.eq(imp_rd.data), imp_high.eq(imp_rd.data >= imp_thr),
                             imp_valid.eq(1)]
                m.next = "IMPORTANCE_SEND"

            with m.State("IMPORTANCE_SEND"):
                with m.If(self.importance.ready):
                    m.d.sync += [imp_valid.eq(0), imp_next.eq(imp_next + 1),
                                 imp_raddr.eq(imp_next + 1)]
                    m.next = "IMPORTANCE"

        # busy / cycles: everything after the loads, up to the last importance beat
        working = ~(fsm.ongoing("IDLE") | fsm.ongoing("CMD_DECIDE")
                    | fsm.ongoing("LOAD"))
        m.d.comb += self.busy.eq(working)
        with m.If(working):
            m.d.sync += cycles.eq(cycles + 1)
        return m
