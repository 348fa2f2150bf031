"""ViTALiTy core: the six steps of first-order Taylor linear attention for one head at a time.

Golden twin: :func:`vitaccel.golden.vitality.taylor_int_head`, bit for bit (widths and constants
come from :class:`vitaccel.golden.vitality.Params`).

Streams (``R = rows``, ``C = cols`` of the systolic array; ``AT = ceil(d/R)``, ``BT = ceil(d/C)``):

* ``cmd`` -- one beat ``{n}`` per head. ``n`` outside ``1..n_max`` raises the sticky ``error`` flag
  and is dropped (no data consumed).
* ``k``, ``v`` -- token tile by token tile: for ``i0 = 0, R, 2R, ..`` and each feature ``a < d``, one
  beat of ``R`` int8 lanes ``K[i0 + r, a]`` (lanes past ``n`` are ignored). This is the layout the
  systolic array consumes (a column of a token tile per step), so no on-chip transpose is needed.
* ``q`` -- for each token ``i < n`` and each feature tile ``at``, one beat of ``R`` lanes
  ``Q[i, at R + r]`` (lanes past ``d`` are ignored).
* ``z`` -- for each output tile ``bt`` and each token ``i``, one beat ``{z: C int8 lanes
  Z[i, bt C + c] (lanes past d read 0), clamped: t_D[i] <= 0}``.

k, v and q are accepted concurrently once the command is taken; q may arrive during steps 1-3.

Steps and blocks::

    1  accumulator array (ksum, vsum, per k/v beat) -> divider array, single divisor n (k_bar)
       -> adder array (K^ = K << F - k_bar, formed on the fly as K streams into SA-General)
    2  SA-General passes (bt, token tile): V tile stationary, K^ columns streamed, G accumulated
       in the G buffer; the last pass re-quantises G to 16 bits into the Gq tile buffer
    3  k^_sum accumulates the streamed K^ during the bt = 0 passes (v_sum was summed in step 1)
    4  SA-Diag: one column of R PEs computes t_D[i] = n c_D + Q[i] . k^_sum (AT steps per row);
       a per-row-divisor divider turns it into r[i]. It runs while SA-General still computes G,
       so step 5 rarely waits for it (the paper overlaps it with step 5; starting it earlier
       keeps the single iterative divider off the critical path).
    5  SA-General passes (bt, at): Gq tile stationary, Q streamed over all tokens; the first pass
       starts each column from c_N v_sum[b], the others from the T buffer
    6  the last pass multiplies by r[i] and rounds/saturates in the shared Requantizer
       (multiplier = r[i], shift = R + out_shift).

``constant_td``: step 4 is skipped and one reciprocal of ``n c_D`` serves every row.

Flow control: a single enable ``en`` (the Requantizer's input ready) advances the issue stage,
the operand stage, the systolic array and the requantiser together, so output back-pressure
freezes the datapath without any skid buffer. A pass is at least ``rows + cols + 3`` steps (idle
slots are inserted for short passes) so that a partial sum written back by one pass is in the
buffer before the next pass reads it, and the array's shadow tile is free again.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.golden.vitality import ACC_BITS, GQ_BITS, KBAR_FRAC, OPERAND_BITS, Params
from vitaccel.rtl.common.banked import BankedMemory
from vitaccel.rtl.common.requant import Requantizer
from vitaccel.rtl.common.skid import SkidBuffer

from .divider_array import DividerArray
from .systolic import SystolicArray

__all__ = ["VitalityCore", "z_layout", "cmd_layout"]


def _ceil_div(a, b):
    return -(-a // b)


def cmd_layout(n_max):
    return data.StructLayout({"n": range(n_max + 1)})


def z_layout(cols):
    return data.StructLayout({"z": data.ArrayLayout(signed(8), cols), "clamped": 1})


class VitalityCore(wiring.Component):
    """One ViTALiTy attention head per command (see the module docstring for the protocol).

    Parameters
    ----------
    params : golden ``Params`` (d, n_max, constants, widths, modes).
    rows, cols : size of SA-General (``rows`` is also the SA-Diag column height).
    div_lanes : lanes of the single-divisor divider array of step 1.
    """

    def __init__(self, params: Params, rows: int = 8, cols: int = 8, div_lanes: int = 8):
        for name, value in (("rows", rows), ("cols", cols), ("div_lanes", div_lanes)):
            if not isinstance(value, int) or value < 1:
                self._MustUse__used = True
                raise ValueError(f"VitalityCore.{name} must be a positive integer, got {value!r}")
        self.p = params
        self.rows, self.cols = rows, cols
        self.div_lanes = min(div_lanes, params.d)
        d, n_max = params.d, params.n_max
        self.a_tiles = _ceil_div(d, rows)
        self.b_tiles = _ceil_div(d, cols)
        self.t_tiles = _ceil_div(n_max, rows)
        self.min_pass = rows + cols + 1 + BankedMemory.LATENCY
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(n_max))),
            "k": In(stream.Signature(data.ArrayLayout(signed(8), rows))),
            "v": In(stream.Signature(data.ArrayLayout(signed(8), rows))),
            "q": In(stream.Signature(data.ArrayLayout(signed(8), rows))),
            "z": Out(stream.Signature(z_layout(cols))),
            "busy": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.p
        R, C, L = self.rows, self.cols, self.div_lanes
        d, n_max = p.d, p.n_max
        AT, BT, TT = self.a_tiles, self.b_tiles, self.t_tiles
        F = KBAR_FRAC
        OW = OPERAND_BITS

        # ---- head parameters, latched from the command -------------------------------------
        n = Signal(range(n_max + 1))
        n_cd = Signal(unsigned(max((n_max * p.c_d).bit_length(), 1)))   # n c_D
        t_pass = Signal(range(max(n_max, self.min_pass) + 1))           # slots of a step-5 pass
        z_total = Signal(range(n_max * BT + 1))
        start = Signal()            # one-cycle pulse: a head's command was accepted
        cmd_ok = (self.cmd.payload.n >= 1) & (self.cmd.payload.n <= n_max)

        # ---- storage -------------------------------------------------------------------------
        # k_mem  [token tile * d + a]       R int8    K columns of a token tile (streamed in step 2)
        # v_mem  [token tile * BT + bt]     R*C int8  V tiles, lane group c = feature bt*C + c
        # q_mem  [i * AT + at]              R int8    Q rows by feature tile (steps 4 and 5)
        # g_mem  [bt * d + a]               C int32   G partial sums across token tiles
        # gq_mem [at * BT + bt]             R*C int16 Gq tiles, lane group r = feature at*R + r
        # t_mem  [i]                        C int32   T_N partial sums across feature tiles
        # r_mem  [i]                        r[i] and the clamped flag of row i
        # SA-General's buffers answer in BankedMemory.LATENCY = 2 enabled steps (every block
        # RAM's output is registered beside it before any depth multiplexer: block RAM -> depth
        # mux -> centring subtract was the ULX3S critical path); q_mem has a second read port
        # for SA-Diag, so it stays a Memory and its SA-General read data gets the same register
        m.submodules.k_mem = k_mem = BankedMemory(8 * R, TT * d)
        m.submodules.v_mem = v_mem = BankedMemory(8 * R * C, TT * BT, granularity=8 * R)
        m.submodules.q_mem = q_mem = Memory(shape=unsigned(8 * R), depth=n_max * AT, init=[])
        m.submodules.g_mem = g_mem = BankedMemory(ACC_BITS * C, d * BT)
        m.submodules.gq_mem = gq_mem = BankedMemory(GQ_BITS * R * C, AT * BT,
                                                    granularity=GQ_BITS * C)
        m.submodules.t_mem = t_mem = BankedMemory(ACC_BITS * C, n_max)
        m.submodules.r_mem = r_mem = BankedMemory(p.recip_bits + 1, n_max)
        k_wr, v_wr, q_wr = k_mem.write, v_mem.write, q_mem.write_port()
        g_wr, gq_wr, t_wr, r_wr = g_mem.write, gq_mem.write, t_mem.write, r_mem.write
        k_rd, v_rd, q_rd, g_rd, gq_rd, t_rd, r_rd = (
            k_mem.read, v_mem.read, q_mem.read_port(), g_mem.read, gq_mem.read, t_mem.read,
            r_mem.read)
        q_rd_diag = q_mem.read_port()
        q_rd_data = Signal.like(q_rd.data)       # q_rd.data one enabled step later (LATENCY 2)

        # accumulator array: column sums of K and V (step 1), k^_sum (step 3)
        ksum = [Signal(signed(p.ksum_bits), name=f"ksum{a}") for a in range(d)]
        vsum = [Signal(signed(p.vsum_bits), name=f"vsum{b}") for b in range(d)]
        khs = [Signal(signed(p.khs_bits), name=f"khat_sum{a}") for a in range(d)]
        kbar = [Signal(signed(p.kbar_bits), name=f"kbar{a}") for a in range(d)]

        with m.If(start):
            m.d.sync += [s.eq(0) for s in ksum + vsum + khs + kbar]

        # ---- loaders (k, v, q streams) -------------------------------------------------------
        k_busy, v_busy, q_busy = Signal(), Signal(), Signal()
        k_a = Signal(range(d))
        k_i0 = Signal(range(n_max + R))
        k_addr = Signal(range(TT * d + 1))
        m.d.comb += [self.k.ready.eq(k_busy), k_wr.addr.eq(k_addr), k_wr.data.eq(self.k.payload)]
        k_fire = self.k.valid & k_busy
        k_sum_pending = self._column_sums(m, k_fire, self.k.payload, k_i0, n, k_a, ksum, "ksum")
        with m.If(k_fire):
            m.d.comb += k_wr.en.eq(1)
            m.d.sync += k_addr.eq(k_addr + 1)
            with m.If(k_a == d - 1):
                m.d.sync += [k_a.eq(0), k_i0.eq(k_i0 + R)]
                with m.If(k_i0 + R >= n):
                    m.d.sync += k_busy.eq(0)
            with m.Else():
                m.d.sync += k_a.eq(k_a + 1)

        v_b = Signal(range(d))
        v_c = Signal(range(C))
        v_i0 = Signal(range(n_max + R))
        v_word = Signal(range(TT * BT + 1))      # it * BT + b // C
        v_row = Signal(range(TT * BT + 1))       # it * BT
        m.d.comb += [self.v.ready.eq(v_busy), v_wr.addr.eq(v_word),
                     v_wr.data.eq(Cat(*[self.v.payload.as_value() for _ in range(C)]))]
        v_fire = self.v.valid & v_busy
        v_sum_pending = self._column_sums(m, v_fire, self.v.payload, v_i0, n, v_b, vsum, "vsum")
        with m.If(v_fire):
            m.d.comb += v_wr.en.eq(1 << v_c)
            with m.If(v_b == d - 1):
                m.d.sync += [v_b.eq(0), v_c.eq(0), v_i0.eq(v_i0 + R), v_row.eq(v_row + BT),
                             v_word.eq(v_row + BT)]
                with m.If(v_i0 + R >= n):
                    m.d.sync += v_busy.eq(0)
            with m.Else():
                m.d.sync += v_b.eq(v_b + 1)
                with m.If(v_c == C - 1):
                    m.d.sync += [v_c.eq(0), v_word.eq(v_word + 1)]
                with m.Else():
                    m.d.sync += v_c.eq(v_c + 1)

        q_at = Signal(range(AT))
        q_i = Signal(range(n_max + 1))
        q_addr = Signal(range(n_max * AT + 1))
        q_lanes = [Mux(q_at * R + r < d, self.q.payload[r], 0) for r in range(R)]
        m.d.comb += [self.q.ready.eq(q_busy), q_wr.addr.eq(q_addr),
                     q_wr.data.eq(Cat(*[lane[:8] for lane in q_lanes]))]
        with m.If(self.q.valid & q_busy):
            m.d.comb += q_wr.en.eq(1)
            m.d.sync += q_addr.eq(q_addr + 1)
            with m.If(q_at == AT - 1):
                m.d.sync += [q_at.eq(0), q_i.eq(q_i + 1)]
                with m.If(q_i == n - 1):
                    m.d.sync += q_busy.eq(0)
            with m.Else():
                m.d.sync += q_at.eq(q_at + 1)

        with m.If(start):
            m.d.sync += [
                k_busy.eq(1), k_a.eq(0), k_i0.eq(0), k_addr.eq(0),
                v_busy.eq(1), v_b.eq(0), v_c.eq(0), v_i0.eq(0), v_word.eq(0), v_row.eq(0),
                q_busy.eq(1), q_at.eq(0), q_i.eq(0), q_addr.eq(0),
            ]

        # ---- step 1: divider array, single divisor n -------------------------------------------
        m.submodules.kbar_div = kbar_div = DividerArray(
            L, num_width=p.ksum_bits + F, den_width=max(n_max.bit_length(), 1),
            out_width=p.kbar_bits, shared_divisor=True)
        chunks = _ceil_div(d, L)
        chunk = Signal(range(chunks))
        m.d.comb += kbar_div.i.payload.divisor.eq(n)
        for lane in range(L):
            column = Array([ksum[ch * L + lane] if ch * L + lane < d else Const(0, 1)
                            for ch in range(chunks)])[chunk]
            m.d.comb += kbar_div.i.payload.numerators[lane].eq(column << F)
        with m.If(kbar_div.o.valid & kbar_div.o.ready):
            for ch in range(chunks):
                with m.If(chunk == ch):
                    for lane in range(L):
                        if ch * L + lane < d:
                            m.d.sync += kbar[ch * L + lane].eq(kbar_div.o.payload.quotients[lane])

        # ---- SA-General, the requantiser of step 6, and the shared enable ----------------------
        side_layout = data.StructLayout({
            "phase_t": 1, "last": 1,
            "addr": range(max(d * BT, n_max)),          # G buffer row / token index
            "gq_word": range(AT * BT), "gq_lane": range(R),
            "recip": unsigned(p.recip_bits), "clamped": 1,
        })
        m.submodules.sa = sa = SystolicArray(R, C, OW, ACC_BITS, side_layout.size)
        m.submodules.requant = rq = Requantizer(C, in_width=ACC_BITS, out_width=8,
                                                multiplier_bits=p.recip_bits)
        en = Signal()
        m.d.comb += [en.eq(rq.i.ready), sa.en.eq(en), rq.shift.eq(p.total_shift)]

        # ---- issue stage (S0): counters and buffer reads ----------------------------------------
        g_slot = Signal(range(max(d, self.min_pass)))
        g_pass = max(d, self.min_pass)
        g_bt = Signal(range(BT))
        g_i0 = Signal(range(n_max + R))
        g_kbase = Signal(range(TT * d + 1))           # token tile * d
        g_vword = Signal(range(TT * BT + 1))          # token tile * BT + bt
        g_vrow = Signal(range(TT * BT + 1))           # token tile * BT
        g_gbase = Signal(range(d * BT + 1))           # bt * d
        g_ar = Signal(range(R))                       # slot % R
        g_gqword = Signal(range(AT * BT + 1))         # (slot // R) * BT + bt

        t_slot = Signal(range(max(n_max, self.min_pass)))
        t_bt = Signal(range(BT))
        t_at = Signal(range(AT))
        t_qaddr = Signal(range(n_max * AT + AT))      # slot * AT + at
        t_gqword = Signal(range(AT * BT + 1))         # at * BT + bt

        recip_count = Signal(range(n_max + 1))        # rows whose reciprocal is in r_mem
        recip_const = Signal(unsigned(p.recip_bits))  # constant_td: the one reciprocal
        recip_const_ok = Signal()

        issue_g = Signal()
        issue_t = Signal()
        slot_valid = Signal()
        # SR registers (the reads' first cycle), loaded when ``en`` from the issue counters; S1
        # (operand stage) is the same set one enabled step later, aligned with the buffers' data
        sr_valid, sr_phase_t, sr_tag, sr_first, sr_bt0 = (Signal(name=f"sr_{x}") for x in (
            "valid", "phase_t", "tag", "first", "bt0"))
        sr_tokens = Signal(range(R + 1))              # valid token lanes (step 2)
        sr_kbar = Signal(signed(p.kbar_bits))
        sr_a = Signal(range(d))
        sr_vsum = [Signal(signed(p.vsum_bits), name=f"sr_vsum{c}") for c in range(C)]
        sr_cols = Signal(range(C + 1))                # valid V columns of the tile (step 2)
        sr_side = Signal(side_layout)

        s1_valid, s1_phase_t, s1_tag, s1_first, s1_bt0 = (Signal(name=f"s1_{x}") for x in (
            "valid", "phase_t", "tag", "first", "bt0"))
        s1_tokens, s1_kbar = Signal.like(sr_tokens, name="s1_tokens"), Signal.like(sr_kbar, name="s1_kbar")
        s1_a, s1_cols = Signal.like(sr_a, name="s1_a"), Signal.like(sr_cols, name="s1_cols")
        s1_vsum = [Signal.like(x, name=f"s1_vsum{c}") for c, x in enumerate(sr_vsum)]
        s1_side = Signal(side_layout)
        with m.If(en):
            m.d.sync += [dst.eq(src) for dst, src in zip(
                [s1_valid, s1_phase_t, s1_tag, s1_first, s1_bt0, s1_tokens, s1_kbar, s1_a,
                 s1_cols, s1_side, *s1_vsum],
                [sr_valid, sr_phase_t, sr_tag, sr_first, sr_bt0, sr_tokens, sr_kbar, sr_a,
                 sr_cols, sr_side, *sr_vsum])]

        for port in (k_rd, v_rd, q_rd, g_rd, gq_rd, t_rd, r_rd):
            m.d.comb += port.en.eq(en)
        m.d.comb += [
            k_rd.addr.eq(g_kbase + g_slot),
            v_rd.addr.eq(g_vword),
            g_rd.addr.eq(g_gbase + g_slot),
            q_rd.addr.eq(t_qaddr),
            gq_rd.addr.eq(t_gqword),
            t_rd.addr.eq(t_slot),
            r_rd.addr.eq(t_slot),
        ]

        t_last_pass = t_at == AT - 1
        recip_ready = (recip_const_ok if p.constant_td else recip_count > t_slot)
        # A last-pass token must wait for its reciprocal (step 4 may still be running).
        t_wait = t_last_pass & (t_slot < n) & ~recip_ready

        with m.If(en):
            m.d.sync += [sr_valid.eq(slot_valid), sr_phase_t.eq(issue_t)]
            with m.If(issue_g):
                rows_left = n - g_i0
                m.d.sync += [
                    sr_tag.eq(g_slot == 0),
                    sr_first.eq(g_i0 == 0),
                    sr_bt0.eq(g_bt == 0),
                    sr_tokens.eq(Mux(rows_left >= R, R, rows_left)),
                    sr_kbar.eq(Array(kbar)[g_slot] if d > 1 else kbar[0]),
                    sr_a.eq(g_slot),
                    sr_cols.eq(Mux(g_bt * C + C <= d, C, d - g_bt * C)),
                    sr_side.addr.eq(g_gbase + g_slot),
                    sr_side.gq_word.eq(g_gqword),
                    sr_side.gq_lane.eq(g_ar),
                    sr_side.last.eq(g_i0 + R >= n),
                ]
            with m.If(issue_t):
                m.d.sync += [
                    sr_tag.eq(t_slot == 0),
                    sr_first.eq(t_at == 0),
                    sr_bt0.eq(0),
                    sr_side.addr.eq(t_slot),
                    sr_side.last.eq(t_last_pass),
                ]
                for c in range(C):
                    m.d.sync += sr_vsum[c].eq(Array(
                        [vsum[bt * C + c] if bt * C + c < d else Const(0, 1)
                         for bt in range(BT)])[t_bt])

        # ---- main sequencer --------------------------------------------------------------------
        with m.FSM(name="main"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.If(cmd_ok):
                        nn = self.cmd.payload.n
                        m.d.comb += start.eq(1)
                        m.d.sync += [
                            n.eq(nn), n_cd.eq(nn * p.c_d),
                            t_pass.eq(Mux(nn > self.min_pass, nn, self.min_pass)),
                            z_total.eq(nn * BT),
                            chunk.eq(0),
                        ]
                        m.next = "LOAD"
                    with m.Else():
                        m.d.sync += self.error.eq(1)
            with m.State("LOAD"):
                m.d.comb += self.busy.eq(1)
                with m.If(~k_busy & ~v_busy & ~k_sum_pending & ~v_sum_pending):
                    m.next = "CENTER" if p.center_keys else "G_START"
            with m.State("CENTER"):
                m.d.comb += [self.busy.eq(1), kbar_div.i.valid.eq(1)]
                with m.If(kbar_div.i.ready):
                    m.next = "CENTER_WAIT"
            with m.State("CENTER_WAIT"):
                m.d.comb += [self.busy.eq(1), kbar_div.o.ready.eq(1)]
                with m.If(kbar_div.o.valid):
                    with m.If(chunk == chunks - 1):
                        m.next = "G_START"
                    with m.Else():
                        m.d.sync += chunk.eq(chunk + 1)
                        m.next = "CENTER"
            with m.State("G_START"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [g_slot.eq(0), g_bt.eq(0), g_i0.eq(0), g_kbase.eq(0), g_vword.eq(0),
                             g_vrow.eq(0), g_gbase.eq(0), g_ar.eq(0),
                             g_gqword.eq(0)]
                m.next = "G"
            with m.State("G"):
                # step 2 (and 3): passes over (bt, token tile), d slots each
                m.d.comb += [self.busy.eq(1), issue_g.eq(1), slot_valid.eq(g_slot < d)]
                with m.If(en):
                    with m.If(g_slot == g_pass - 1):
                        m.d.sync += [g_slot.eq(0), g_ar.eq(0), g_gqword.eq(g_bt)]
                        with m.If(g_i0 + R >= n):          # last token tile of this bt
                            m.d.sync += [g_i0.eq(0), g_kbase.eq(0), g_vrow.eq(0),
                                         g_vword.eq(g_bt + 1), g_bt.eq(g_bt + 1),
                                         g_gbase.eq(g_gbase + d), g_gqword.eq(g_bt + 1)]
                            with m.If(g_bt == BT - 1):
                                m.next = "G_DRAIN"
                        with m.Else():
                            m.d.sync += [g_i0.eq(g_i0 + R), g_kbase.eq(g_kbase + d),
                                         g_vrow.eq(g_vrow + BT), g_vword.eq(g_vrow + BT + g_bt)]
                    with m.Else():
                        m.d.sync += g_slot.eq(g_slot + 1)
                        with m.If(g_ar == R - 1):
                            m.d.sync += [g_ar.eq(0), g_gqword.eq(g_gqword + BT)]
                        with m.Else():
                            m.d.sync += g_ar.eq(g_ar + 1)
            with m.State("G_DRAIN"):
                m.d.comb += self.busy.eq(1)
                # Gq must be complete before step 5 reads it, and Q must be in its buffer.
                with m.If(~sr_valid & ~s1_valid & ~sa.busy & ~q_busy):
                    m.d.sync += [t_slot.eq(0), t_bt.eq(0), t_at.eq(0), t_qaddr.eq(0),
                                 t_gqword.eq(0)]
                    m.next = "T"
            with m.State("T"):
                # step 5 (+6): passes over (bt, at), all tokens each
                m.d.comb += [self.busy.eq(1), issue_t.eq(~t_wait),
                             slot_valid.eq((t_slot < n) & ~t_wait)]
                with m.If(en & ~t_wait):
                    with m.If(t_slot == t_pass - 1):
                        m.d.sync += t_slot.eq(0)
                        with m.If(t_at == AT - 1):
                            m.d.sync += [t_at.eq(0), t_bt.eq(t_bt + 1), t_qaddr.eq(0),
                                         t_gqword.eq(t_bt + 1)]
                            with m.If(t_bt == BT - 1):
                                m.next = "T_DRAIN"
                        with m.Else():
                            m.d.sync += [t_at.eq(t_at + 1), t_qaddr.eq(t_at + 1),
                                         t_gqword.eq(t_gqword + BT)]
                    with m.Else():
                        m.d.sync += [t_slot.eq(t_slot + 1), t_qaddr.eq(t_qaddr + AT)]
            with m.State("T_DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(z_total == 0):
                    m.next = "IDLE"

        with m.If(self.z.valid & self.z.ready):
            m.d.sync += z_total.eq(z_total - 1)

        # ---- operand stage (S1) -> SA-General ---------------------------------------------------
        khat = [Signal(signed(OW), name=f"khat{r}") for r in range(R)]
        for r in range(R):
            k_lane = k_rd.data.word_select(r, 8).as_signed()
            m.d.comb += khat[r].eq(Mux(r < s1_tokens, (k_lane << F) - s1_kbar, 0))
        with m.If(en):
            m.d.sync += q_rd_data.eq(q_rd.data)
        q_lanes_rd = [q_rd_data.word_select(r, 8).as_signed() for r in range(R)]
        for r in range(R):
            m.d.comb += sa.i_x[r].eq(Mux(s1_phase_t, q_lanes_rd[r], khat[r]))
        for c in range(C):
            g_part = g_rd.data.word_select(c, ACC_BITS).as_signed()
            t_part = t_rd.data.word_select(c, ACC_BITS).as_signed()
            m.d.comb += sa.i_psum[c].eq(Mux(
                s1_phase_t,
                Mux(s1_first, s1_vsum[c] * p.c_n, t_part),
                Mux(s1_first, 0, g_part)))
            for r in range(R):
                v_val = v_rd.data.word_select(c * R + r, 8).as_signed()
                gq_val = gq_rd.data.word_select(r * C + c, GQ_BITS).as_signed()
                m.d.comb += sa.tile[r][c].eq(Mux(s1_phase_t, gq_val,
                                                 Mux(c < s1_cols, v_val, 0)))
        side = Signal(side_layout)
        m.d.comb += side.eq(s1_side)
        if p.constant_td:
            m.d.comb += [side.recip.eq(recip_const), side.clamped.eq(0)]
        else:
            m.d.comb += [side.recip.eq(r_rd.data[:p.recip_bits]),
                         side.clamped.eq(r_rd.data[p.recip_bits])]
        m.d.comb += [
            side.phase_t.eq(s1_phase_t),
            sa.i_valid.eq(s1_valid),
            sa.i_tag.eq(s1_tag),
            sa.load.eq(s1_valid & s1_tag),
            sa.i_side.eq(side),
        ]
        # step 3: k^_sum accumulates the centred keys while they stream into the array. Three
        # stages behind S1 (same enable): the centred lanes, their sum, the accumulation. The
        # memory output -> subtract -> adder tree -> accumulator path in one cycle was 17 ns.
        khat_reg = [Signal(signed(OW), name=f"khs_lane{r}") for r in range(R)]
        khat_a, khs_row_a = Signal(range(d)), Signal(range(d))
        khat_valid, khs_row_valid = Signal(), Signal()
        khs_row = Signal(signed(OW + R.bit_length()))
        with m.If(en):
            m.d.sync += [[khat_reg[r].eq(khat[r]) for r in range(R)], khat_a.eq(s1_a),
                         khat_valid.eq(s1_valid & ~s1_phase_t & s1_bt0),
                         khs_row.eq(sum(khat_reg)), khs_row_a.eq(khat_a),
                         khs_row_valid.eq(khat_valid)]
            with m.If(khs_row_valid):
                for a in range(d):
                    with m.If(khs_row_a == a):
                        m.d.sync += khs[a].eq(khs[a] + khs_row)
        with m.If(start):
            m.d.sync += [khat_valid.eq(0), khs_row_valid.eq(0)]

        # ---- SA-General results --------------------------------------------------------------
        out_side = data.View(side_layout, sa.o_side)
        out_fire = en & sa.o_valid
        m.d.comb += [
            g_wr.addr.eq(out_side.addr), g_wr.data.eq(sa.o_y),
            t_wr.addr.eq(out_side.addr), t_wr.data.eq(sa.o_y),
            gq_wr.addr.eq(out_side.gq_word),
            g_wr.en.eq(out_fire & ~out_side.phase_t & ~out_side.last),
            t_wr.en.eq(out_fire & out_side.phase_t & ~out_side.last),
        ]
        gq_row = []
        gq_hi, gq_lo = (1 << (GQ_BITS - 1)) - 1, -(1 << (GQ_BITS - 1))
        for c in range(C):
            y = sa.o_y[c]
            if p.g_shift:
                shifted = (y >> p.g_shift) + y[p.g_shift - 1]      # RHU: floor + the half bit
            else:
                shifted = y
            saturated = Mux(shifted > gq_hi, gq_hi, Mux(shifted < gq_lo, gq_lo, shifted))
            gq_row.append(saturated[:GQ_BITS])
        m.d.comb += gq_wr.data.eq(Cat(*[Cat(*gq_row) for _ in range(R)]))
        with m.If(out_fire & ~out_side.phase_t & out_side.last):
            m.d.comb += gq_wr.en.eq(1 << out_side.gq_lane)

        # step 6: T_N * r[i], rounded and saturated by the shared Requantizer
        m.d.comb += [
            rq.i.valid.eq(sa.o_valid & out_side.phase_t & out_side.last),
            rq.i.payload.eq(sa.o_y),
            rq.multiplier.eq(out_side.recip),
        ]
        # The clamped flag rides alongside the Requantizer's pipeline (same enable and depth).
        flag = out_side.clamped
        for k in range(Requantizer.LATENCY):
            nxt = Signal(name=f"clamped_d{k}")
            with m.If(rq.i.ready):
                m.d.sync += nxt.eq(flag)
            flag = nxt
        # z leaves through a register slice, so the shared enable (the requantiser's input ready)
        # depends on registers only: with the sink's ready running straight into it, the host
        # link's UART logic -> enable -> every datapath register was the ULX3S critical path.
        m.submodules.z_skid = z_skid = SkidBuffer(self.z.payload.shape())
        wiring.connect(m, z_skid.o, wiring.flipped(self.z))
        m.d.comb += [
            z_skid.i.valid.eq(rq.o.valid),
            z_skid.i.payload.z.eq(rq.o.payload),
            z_skid.i.payload.clamped.eq(flag),
            rq.o.ready.eq(z_skid.i.ready),
        ]

        # ---- step 4: SA-Diag (t_D) and the per-row reciprocal ---------------------------------
        m.submodules.recip_div = recip_div = DividerArray(
            1, num_width=(p.out_mult << p.recip_frac).bit_length() + 1,
            den_width=p.td_bits - 1, out_width=p.recip_bits, out_signed=False,
            shared_divisor=False)
        # The numerator is a constant, but it is held in a register loaded with each command:
        # a constant-only ``always @*`` block (which is what a constant comb assignment to part
        # of a payload becomes in Verilog) is never evaluated by Verilator or Icarus.
        recip_numerator = Signal(unsigned((p.out_mult << p.recip_frac).bit_length()))
        with m.If(start):
            m.d.sync += recip_numerator.eq(p.out_mult << p.recip_frac)
        m.d.comb += [recip_div.i.payload.numerators[0].eq(recip_numerator),
                     recip_div.o.ready.eq(1)]
        pending_clamped = Signal()
        r_data = Cat(recip_div.o.payload.quotients[0], pending_clamped)
        m.d.comb += [r_wr.addr.eq(recip_count), r_wr.data.eq(r_data)]
        with m.If(recip_div.o.valid):
            m.d.sync += recip_count.eq(recip_count + 1)
            if p.constant_td:
                m.d.sync += [recip_const.eq(recip_div.o.payload.quotients[0]),
                             recip_const_ok.eq(1)]
            else:
                m.d.comb += r_wr.en.eq(1)
        with m.If(start):
            m.d.sync += [recip_count.eq(0), recip_const_ok.eq(0)]

        if p.constant_td:
            with m.FSM(name="diag"):
                with m.State("IDLE"):
                    with m.If(start):
                        m.next = "SEND"
                with m.State("SEND"):
                    m.d.comb += [recip_div.i.valid.eq(1),
                                 recip_div.i.payload.divisors[0].eq(n_cd)]
                    with m.If(recip_div.i.ready):
                        m.next = "IDLE"
        else:
            self._sa_diag(m, p, start, n, n_cd, khs, q_busy, q_rd_diag, recip_div,
                          pending_clamped,
                          (sr_valid & ~sr_phase_t & sr_bt0) | (s1_valid & ~s1_phase_t & s1_bt0)
                          | khat_valid | khs_row_valid,
                          issue_g & (g_bt == 0))
        return m

    def _column_sums(self, m, fire, lanes, i0, n, index, sums, name):
        """Step 1's accumulator array for one of K, V: every beat of ``rows`` token lanes (lanes
        at or past ``n`` count as 0) adds into ``sums[index]``. Three registered stages (masked
        lanes, their sum, the accumulation) so no cycle holds a compare, an adder tree and an
        accumulator at once; returns the signal that is high while a beat is still in flight."""
        R, d = self.rows, len(sums)
        masked = [Signal(signed(8), name=f"{name}_lane{r}") for r in range(R)]
        row_sum = Signal(signed(8 + R.bit_length()), name=f"{name}_row")
        index1, index2 = Signal.like(index, name=f"{name}_idx1"), Signal.like(index, name=f"{name}_idx2")
        valid1, valid2 = Signal(name=f"{name}_v1"), Signal(name=f"{name}_v2")
        m.d.sync += [[masked[r].eq(Mux(i0 + r < n, lanes[r], 0)) for r in range(R)],
                     index1.eq(index), valid1.eq(fire),
                     row_sum.eq(sum(masked)), index2.eq(index1), valid2.eq(valid1)]
        with m.If(valid2):
            for a in range(d):
                with m.If(index2 == a):
                    m.d.sync += sums[a].eq(sums[a] + row_sum)
        return valid1 | valid2

    def _sa_diag(self, m, p, start, n, n_cd, khs, q_busy, q_rd, recip_div, pending_clamped,
                 khs_updating, khs_issuing):
        """Step 4: t_D[i] = n c_D + sum_at Q[i, at-tile] . k^_sum[at-tile] on one column of R PEs
        (k^_sum tile against Q[i] tile, products summed down the column), AT steps per row; then
        t_D <= 0 -> flag and clamp to 1, and the per-row-divisor divider makes r[i]."""
        R, AT, d, n_max = self.rows, self.a_tiles, p.d, p.n_max
        td = Signal(signed(p.td_bits))
        d_i = Signal(range(n_max + 1))
        d_at = Signal(range(AT))
        d_addr = Signal(range(n_max * AT + 1))
        khs_tile = [Signal(signed(p.khs_bits), name=f"diag_khs{r}") for r in range(R)]
        m.d.comb += [q_rd.addr.eq(d_addr), q_rd.en.eq(1)]
        # The PE column, pipelined: [Q read, k^_sum tile] -> [operands registered] -> [R products]
        # -> [column sum] -> [t_D accumulate]. ``v*``/``first*`` follow a tile through the
        # stages. The operand stage keeps the block RAM output out of the multiplier's cycle.
        v1, vq, v2, v3, first1, firstq, first2, first3 = (Signal(name=f"diag_{x}") for x in (
            "v1", "vq", "v2", "v3", "first1", "firstq", "first2", "first3"))
        q_lane = [Signal(signed(8), name=f"diag_q{r}") for r in range(R)]
        khs_lane = [Signal(signed(p.khs_bits), name=f"diag_khs_q{r}") for r in range(R)]
        prod = [Signal(signed(8 + p.khs_bits), name=f"diag_prod{r}") for r in range(R)]
        dot = Signal(signed(p.td_bits))
        m.d.sync += [v1.eq(0), vq.eq(v1), v2.eq(vq), v3.eq(v2),
                     firstq.eq(first1), first2.eq(firstq), first3.eq(first2), dot.eq(sum(prod))]
        for r in range(R):
            m.d.sync += [q_lane[r].eq(q_rd.data.word_select(r, 8).as_signed()),
                         khs_lane[r].eq(khs_tile[r]), prod[r].eq(q_lane[r] * khs_lane[r])]
        with m.If(v3):
            m.d.sync += td.eq(Mux(first3, n_cd, td) + dot)
        # k^_sum is final once the bt = 0 passes of step 2 have left the operand stage.
        khs_final = Signal()
        with m.FSM(name="diag"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [d_i.eq(0), d_at.eq(0), d_addr.eq(0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(khs_final & ~q_busy):
                    m.next = "ROW"
            with m.State("ROW"):
                m.d.sync += [v1.eq(1), first1.eq(d_at == 0),
                             d_addr.eq(d_addr + 1)]
                for r in range(R):
                    m.d.sync += khs_tile[r].eq(Array(
                        [khs[at * R + r] if at * R + r < d else Const(0, 1)
                         for at in range(AT)])[d_at])
                with m.If(d_at == AT - 1):
                    m.d.sync += d_at.eq(0)
                    m.next = "SUM"
                with m.Else():
                    m.d.sync += d_at.eq(d_at + 1)
            with m.State("SUM"):
                with m.If(~v1 & ~vq & ~v2 & ~v3):
                    m.next = "SEND"
            with m.State("SEND"):
                clamped = td <= 0
                m.d.comb += [recip_div.i.valid.eq(1),
                             recip_div.i.payload.divisors[0].eq(Mux(clamped, 1, td))]
                with m.If(recip_div.i.ready):
                    m.d.sync += [pending_clamped.eq(clamped), d_i.eq(d_i + 1)]
                    with m.If(d_i == n - 1):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "ROW"
        # khs_final: set once step 2 has moved past bt = 0 and the last bt = 0 slot was summed.
        seen_bt0 = Signal()
        with m.If(start):
            m.d.sync += [seen_bt0.eq(0), khs_final.eq(0)]
        with m.Elif(khs_issuing):
            m.d.sync += seen_bt0.eq(1)
        with m.Elif(seen_bt0 & ~khs_updating):
            m.d.sync += khs_final.eq(1)
