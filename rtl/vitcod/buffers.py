"""The memories the ViTCoD components share, created once by the core.

Q, K and V have one write port (their loader) and one read port per line (replicated block RAM:
the price of independent Sparser lines); the index buffers one write port (the CSC walker) and
read ports for the walker, the packer and every line; the score buffers are
:class:`~vitaccel.rtl.common.banked.BankedMemory` (their outputs registered); each engine's row
maxima have the read-modify-write pair (the read transparent for the write) and phase 2's reads of
the Sparser engine's rows A and B.
"""
from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from amaranth.lib.memory import Memory
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import T_BITS
from vitaccel.rtl.common.banked import BankedMemory

from .layouts import (bank_depth, bank_layout, col_bits, dense_depth, entry_pos_layout,
                      entry_rc_layout, glob_depth, lane_layout, qkv_depth)

__all__ = ["shared_buffers", "read_port"]


def read_port(m, consumer, port):
    """Join a component's read-port member to a memory read port (``wiring.connect`` rejects an
    asynchronous port, whose enable is the constant 1)."""
    m.d.comb += [port.addr.eq(consumer.addr), consumer.data.eq(port.data)]
    if port.domain != "comb":
        m.d.comb += port.en.eq(consumer.en)


def shared_buffers(m, cfg):
    """The memories the components share, by name (write ports, read ports or the
    memory itself where several components take read ports of it)."""
    L, P, NM, CB = cfg.lines, cfg.macs_per_line, cfg.n_max, col_bits(cfg)
    b = {}

    def memory(name, shape, depth):
        m.submodules[name] = mem = Memory(shape=shape, depth=depth, init=[])
        return mem

    for name in "qkv":
        b[name] = memory(f"{name}_buffer", unsigned(8 * P), qkv_depth(cfg))
    b["glob"] = memory("glob_buffer", unsigned(CB), glob_depth(cfg))
    b["scol"] = memory("scol_buffer", unsigned(CB), NM)
    b["cptr"] = memory("colptr_buffer", unsigned(16), NM + 1)
    b["cnt"] = memory("rowcnt_buffer", unsigned(16), NM)
    # the CSC index buffer, expanded by the walker: (row, column) and row-order position
    b["ent"] = memory("entry_buffer", entry_rc_layout(cfg), cfg.nnz_max)
    b["pos"] = memory("entry_pos_buffer", entry_pos_layout(), cfg.nnz_max)
    for name in ("glob", "scol", "cptr", "cnt", "ent", "pos"):
        b[f"{name}_wr"] = b[name].write_port()
    dv = memory("dense_valid_buffer", unsigned(L), dense_depth(cfg))
    b["dv_wr"], b["dv_rd"] = dv.write_port(), dv.read_port()
    # Scores: dense words of L lanes {t, ok}; sparse banks of {t, col} in row order. They
    # answer in BankedMemory.LATENCY = 2 cycles, on the ECP5 from the block RAMs' own
    # output registers, so their outputs reach the lines' score selection through a
    # register only (phase 2 has stage 1r for it).
    b["dense_scores"] = m.submodules.dense_scores = BankedMemory(
        data.ArrayLayout(lane_layout(), L).size, dense_depth(cfg), ecp5_output_register=True)
    b["banks"] = []
    for k in range(L):
        # one bank in one block-RAM depth (up to 2048 words: 9-bit blocks): no depth mux
        mem = BankedMemory(bank_layout(cfg).size, bank_depth(cfg),
                           bank_depth=max(512, 1 << ceil_log2(bank_depth(cfg))),
                           ecp5_output_register=True)
        m.submodules[f"score_bank{k}"] = mem
        b["banks"].append(mem)
    # Row maxima per engine: the read-modify-write port pair (the read transparent for the
    # write) and phase 2's reads of the Sparser engine's rows A and B.
    for e in "ds":
        mem = memory(f"{'dense' if e == 'd' else 'sparse'}_row_max", signed(T_BITS), NM)
        b[f"{e}_wr"] = mem.write_port()
        b[f"m{e}"] = mem.read_port(transparent_for=(b[f"{e}_wr"],))
        b[f"m{e}_a"], b[f"m{e}_b"] = mem.read_port(), mem.read_port()
    return b
