"""GEMM engine: C = A @ B (int8 x int8 -> int32) on a :class:`MACArray`, sizes set at run time.

Protocol (one problem per command; problems may follow each other back to back):
  1. ``cmd`` beat {m, n, k}. Sizes outside ``1..m_max`` (``n_max``, ``k_max``) are rejected: the
     sticky ``error`` flag rises and the engine waits for the next command (no data is consumed).
  2. ``a``: the M x K A matrix, row-major, one int8 per beat; ``b``: the K x N B matrix, row-major,
     one int8 per beat. Both are loaded concurrently into on-chip buffers.
  3. ``c``: results, tile by tile (row tiles of ``rows`` outer, column tiles of ``cols`` inner); a
     tile emits one beat per valid row, each beat ``cols`` int32 lanes (lanes past N read 0).

Buffers: A is stored as ``ceil(m_max/rows)*k_max`` words of ``rows`` bytes (row i in byte lane
i % rows at word (i // rows) * K + k), B likewise by columns, so one read per buffer feeds a whole
k-step of the array. Addresses advance by additions only (no multipliers outside the array).
There are two such buffer sets (ping-pong): the load side fills one while the compute side works
on the other, so a stream of problems keeps the array busy whenever loading a problem takes no
longer than computing it (64x64x64 on 8x8: 4096 load cycles, 4096 compute cycles).

``busy`` is high while the compute side issues k-steps or results are in flight; ``cycles``
counts busy cycles since reset (the MAC-utilisation denominator).
"""
from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac_array import MACArray

__all__ = ["GEMMEngine", "cmd_layout"]


def cmd_layout(m_max, n_max, k_max):
    return data.StructLayout({
        "m": range(m_max + 1), "n": range(n_max + 1), "k": range(k_max + 1),
    })


def _ceil_div(a, b):
    return -(-a // b)


class GEMMEngine(wiring.Component):
    def __init__(self, rows=8, cols=8, m_max=64, n_max=64, k_max=64, in_width=8, acc_width=32):
        for name, value in (("rows", rows), ("cols", cols), ("m_max", m_max),
                            ("n_max", n_max), ("k_max", k_max)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GEMMEngine.{name} must be a positive integer, got {value!r}")
        self.rows, self.cols = rows, cols
        self.m_max, self.n_max, self.k_max = m_max, n_max, k_max
        self.in_width, self.acc_width = in_width, acc_width
        self.a_depth = _ceil_div(m_max, rows) * k_max     # words per buffer set
        self.b_depth = _ceil_div(n_max, cols) * k_max
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(m_max, n_max, k_max))),
            "a": In(stream.Signature(signed(in_width))),
            "b": In(stream.Signature(signed(in_width))),
            "c": Out(stream.Signature(data.ArrayLayout(signed(acc_width), cols))),
            "busy": Out(1),
            "error": Out(1),
            "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, IW = self.rows, self.cols, self.in_width
        size = cmd_layout(self.m_max, self.n_max, self.k_max)

        m.submodules.array = array = MACArray(R, C, IW, self.acc_width)
        wiring.connect(m, wiring.flipped(self.c), array.result)

        # Two buffer sets in one memory per operand: the top address bit selects the set.
        m.submodules.a_mem = a_mem = Memory(shape=unsigned(R * IW), depth=2 * self.a_depth,
                                            init=[])
        m.submodules.b_mem = b_mem = Memory(shape=unsigned(C * IW), depth=2 * self.b_depth,
                                            init=[])
        a_wr = a_mem.write_port(granularity=IW)
        b_wr = b_mem.write_port(granularity=IW)
        a_rd = a_mem.read_port()
        b_rd = b_mem.read_port()

        # Hand-over between the sides: a buffer set is `full` from the end of its load to the
        # issue of its last k-step; its problem size travels with it.
        full = Signal(2)
        set_size = Array(Signal(size, name=f"set_size_{i}") for i in range(2))
        load_set = Signal()
        comp_set = Signal()
        load_release = Signal()     # load side finished filling `load_set`
        comp_release = Signal()     # compute side issued the last k-step of `comp_set`
        m.d.sync += full.eq((full | (load_release << load_set)) & ~(comp_release << comp_set))

        # ---------------------------------------------------------------- load side ----------
        cmd = self.cmd.payload
        cmd_ok = ((cmd.m >= 1) & (cmd.m <= self.m_max) & (cmd.n >= 1) & (cmd.n <= self.n_max)
                  & (cmd.k >= 1) & (cmd.k <= self.k_max))
        load = Signal(size)
        a_k = Signal(range(self.k_max))           # column within the current A row
        a_lane = Signal(range(R))                 # byte lane = row % R
        a_base = Signal(range(self.a_depth + 1))  # word of the current row group
        a_row = Signal(range(self.m_max + 1))
        a_done = Signal()
        b_k = Signal(range(self.k_max + 1))       # current B row
        b_lane = Signal(range(C))
        b_base = Signal(range(self.b_depth + 1))
        b_col = Signal(range(self.n_max + 1))
        b_done = Signal()

        m.d.comb += [
            a_wr.addr.eq(a_base + a_k + Mux(load_set, self.a_depth, 0)),
            a_wr.data.eq(Cat(*[self.a.payload for _ in range(R)])),
            b_wr.addr.eq(b_base + b_k + Mux(load_set, self.b_depth, 0)),
            b_wr.data.eq(Cat(*[self.b.payload for _ in range(C)])),
        ]

        with m.FSM(name="load_fsm"):
            with m.State("IDLE"):
                # A command is taken only when its buffer set is free, so a rejected or pending
                # command never blocks on data.
                m.d.comb += self.cmd.ready.eq(~full.bit_select(load_set, 1))
                with m.If(self.cmd.valid & self.cmd.ready):
                    with m.If(cmd_ok):
                        m.d.sync += [
                            load.eq(cmd),
                            a_k.eq(0), a_lane.eq(0), a_base.eq(0), a_row.eq(0), a_done.eq(0),
                            b_k.eq(0), b_lane.eq(0), b_base.eq(0), b_col.eq(0), b_done.eq(0),
                        ]
                        m.next = "LOAD"
                    with m.Else():
                        m.d.sync += self.error.eq(1)

            with m.State("LOAD"):
                m.d.comb += [self.a.ready.eq(~a_done), self.b.ready.eq(~b_done)]
                with m.If(self.a.valid & ~a_done):
                    m.d.comb += a_wr.en.eq(1 << a_lane)
                    with m.If(a_k == load.k - 1):
                        m.d.sync += [a_k.eq(0), a_row.eq(a_row + 1)]
                        with m.If(a_row == load.m - 1):
                            m.d.sync += a_done.eq(1)
                        with m.If(a_lane == R - 1):
                            m.d.sync += [a_lane.eq(0), a_base.eq(a_base + load.k)]
                        with m.Else():
                            m.d.sync += a_lane.eq(a_lane + 1)
                    with m.Else():
                        m.d.sync += a_k.eq(a_k + 1)
                with m.If(self.b.valid & ~b_done):
                    m.d.comb += b_wr.en.eq(1 << b_lane)
                    with m.If(b_col == load.n - 1):      # end of a B row
                        m.d.sync += [b_col.eq(0), b_lane.eq(0), b_base.eq(0), b_k.eq(b_k + 1)]
                        with m.If(b_k == load.k - 1):
                            m.d.sync += b_done.eq(1)
                    with m.Else():
                        m.d.sync += b_col.eq(b_col + 1)
                        with m.If(b_lane == C - 1):
                            m.d.sync += [b_lane.eq(0), b_base.eq(b_base + load.k)]
                        with m.Else():
                            m.d.sync += b_lane.eq(b_lane + 1)
                with m.If(a_done & b_done):
                    m.d.comb += load_release.eq(1)
                    m.d.sync += [set_size[load_set].eq(load), load_set.eq(~load_set)]
                    m.next = "IDLE"

        # ------------------------------------------------------------- compute side ----------
        comp = Signal(size)
        i0 = Signal(range(self.m_max + R))        # first row of the current row tile
        j0 = Signal(range(self.n_max + C))        # first column of the current column tile
        kk = Signal(range(self.k_max + 1))
        a_tile = Signal(range(self.a_depth + 1))  # word base of the row tile
        b_tile = Signal(range(self.b_depth + 1))
        issuing = Signal()

        advance = array.operands.ready
        m.d.comb += [
            a_rd.addr.eq(a_tile + kk + Mux(comp_set, self.a_depth, 0)),
            b_rd.addr.eq(b_tile + kk + Mux(comp_set, self.b_depth, 0)),
            a_rd.en.eq(advance),
            b_rd.en.eq(advance),
        ]

        # Sideband of the k-step being read; it meets the memory data one cycle later.
        rd_valid = Signal()
        rd_first = Signal()
        rd_last = Signal()
        rd_nrows = Signal(range(1, R + 1))
        rd_ncols = Signal(range(C + 1))

        rows_left = Signal(range(self.m_max + R + 1))
        cols_left = Signal(range(self.n_max + C + 1))
        m.d.comb += [rows_left.eq(comp.m - i0), cols_left.eq(comp.n - j0)]

        with m.If(advance):
            m.d.sync += [
                rd_valid.eq(issuing),
                rd_first.eq(kk == 0),
                rd_last.eq(kk == comp.k - 1),
                rd_nrows.eq(Mux(rows_left >= R, R, rows_left)),
                rd_ncols.eq(Mux(cols_left >= C, C, cols_left)),
            ]

        ops = array.operands.payload
        m.d.comb += [
            array.operands.valid.eq(rd_valid),
            ops.first.eq(rd_first),
            ops.last.eq(rd_last),
            ops.nrows.eq(rd_nrows),
        ]
        for r in range(R):
            m.d.comb += ops.a[r].eq(a_rd.data.word_select(r, IW).as_signed())
        for c in range(C):
            # Columns past N hold stale data: zero them so tail lanes read 0.
            m.d.comb += ops.b[c].eq(Mux(c < rd_ncols, b_rd.data.word_select(c, IW).as_signed(), 0))

        with m.FSM(name="compute_fsm"):
            with m.State("WAIT"):
                with m.If(full.bit_select(comp_set, 1)):
                    m.d.sync += [comp.eq(set_size[comp_set]),
                                 i0.eq(0), j0.eq(0), kk.eq(0), a_tile.eq(0), b_tile.eq(0)]
                    m.next = "COMPUTE"

            with m.State("COMPUTE"):
                m.d.comb += issuing.eq(1)
                with m.If(advance):
                    with m.If(kk == comp.k - 1):
                        m.d.sync += kk.eq(0)
                        with m.If(j0 + C >= comp.n):           # last column tile of this row tile
                            m.d.sync += [j0.eq(0), b_tile.eq(0)]
                            with m.If(i0 + R >= comp.m):
                                # Last k-step issued: the read ports have taken it, so the set
                                # may be refilled while these k-steps finish in the array.
                                m.d.comb += comp_release.eq(1)
                                m.d.sync += comp_set.eq(~comp_set)
                                m.next = "WAIT"
                            with m.Else():
                                m.d.sync += [i0.eq(i0 + R), a_tile.eq(a_tile + comp.k)]
                        with m.Else():
                            m.d.sync += [j0.eq(j0 + C), b_tile.eq(b_tile + comp.k)]
                    with m.Else():
                        m.d.sync += kk.eq(kk + 1)

        cycles = Signal(32)
        m.d.comb += [self.busy.eq(issuing | rd_valid | array.active), self.cycles.eq(cycles)]
        with m.If(self.busy):
            m.d.sync += cycles.eq(cycles + 1)
        return m
