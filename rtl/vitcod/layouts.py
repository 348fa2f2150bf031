"""What the ViTCoD components say to each other: the command, the run constants, the buffer
sizes and the payloads that cross component boundaries.

Every size here is a function of the unit's validated
:class:`vitaccel.units.vitcod.Config` (``cfg``); nothing is checked again. Abbreviations used
throughout the components: ``L`` = ``cfg.lines``, ``P`` = ``cfg.macs_per_line``, ``FM`` =
``cfg.chunks_max`` (words of ``P`` int8 lanes per Q/K/V row), ``NM`` = ``cfg.n_max``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, signed, unsigned
from amaranth.lib import data
from amaranth.utils import ceil_log2

from vitaccel.golden.vitcod import E_BITS, T_BITS

__all__ = ["ERR_BAD_CMD", "ERR_CSC", "ERR_INDEX_RANGE", "CMD_FIELD_BITS", "cmd_layout",
           "entry_word", "run_layout", "run_constants", "qkv_depth", "dense_depth", "bank_depth", "glob_depth",
           "col_bits", "qkv_addr", "entry_rc_layout", "entry_pos_layout",
           "lane_layout", "bank_layout", "sddmm_issue_layout", "dense_op_layout",
           "pair_layout", "score_tag_layout", "score_layout", "spmm_tag_layout", "line_tag_layout",
           "row_max_layout", "max_update_layout", "PRODUCT_BITS", "T_MIN"]

ERR_BAD_CMD = 1 << 0
ERR_CSC = 1 << 1
ERR_INDEX_RANGE = 1 << 2

#: Width of the fields of a command beat (wide enough to carry, and reject, oversized values).
CMD_FIELD_BITS = 16

#: The least score: the row maximum of a row with no score yet, a lane that does not count.
T_MIN = -(1 << (T_BITS - 1))

#: A line's product of ``e`` (E_BITS + 2 bits, signed) and an int8 (or of two int8 values).
PRODUCT_BITS = E_BITS + 10


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


# --- buffer sizes -------------------------------------------------------------------------------

def qkv_depth(cfg) -> int:
    """Words of a Q/K/V buffer: N rows at a stride of ``chunks_max`` words."""
    return cfg.n_max * cfg.chunks_max


def dense_depth(cfg) -> int:
    """Words of the dense score buffer and of the validity bitmap: one per (key group, query)."""
    return cfg.dense_groups_max * cfg.n_max


def bank_depth(cfg) -> int:
    """Words of one sparse score bank (``lines`` banks hold the row-ordered entries)."""
    return -(-cfg.nnz_max // cfg.lines)


def glob_depth(cfg) -> int:
    """Words of the global-column buffer (one even when ``g_max`` is 0)."""
    return max(cfg.g_max, 1)


def col_bits(cfg) -> int:
    """Bits of a token (row or column) index."""
    return max(ceil_log2(cfg.n_max), 1)


def qkv_addr(cfg, row, chunk):
    """Address of word ``chunk`` (< chunks_max) of a Q/K/V row (stride chunks_max): with
    chunks_max a power of two a concatenation, no adder between an index read and a buffer."""
    fm = cfg.chunks_max
    if fm & (fm - 1) == 0:
        return Cat(chunk[:ceil_log2(fm)], row)
    return row * fm + chunk


# --- the command while it runs ------------------------------------------------------------------

def run_layout(cfg):
    """The accepted command and the constants the components derive from it, registered once
    by the core's command check (so that no component repeats a subtraction or a product)."""
    L, FM, NM = cfg.lines, cfg.chunks_max, cfg.n_max
    return data.StructLayout({
        "n": range(NM + 1),
        "f": range(FM + 1),                        # chunks = ceil(d / macs)
        "g": range(NM + 1),
        "nnz": range(cfg.nnz_max + 1),
        "ld": range(L + 1),                        # lines of the Denser engine
        "ls": range(L + 1),                        # lines of the Sparser engine
        "dense_lines": L,                          # bit l: line l is a Denser line (l < ld)
        "dgroups": range(cfg.dense_groups_max + 1),
        "s_period": range(max(FM, L) + 1),         # cycles per sparse SDDMM group
        "s_win": range(L + 1),                     # Sparser SpMM pairs per cycle: min(ls, f)
        "ncols": range(NM + 1),                    # sparse columns N - G
        # the last chunk / row / word indices, so that loop ends compare against a register
        "f_last": range(FM),
        "n_last": range(NM),
        "dv_last": range(dense_depth(cfg) + 1),    # dgroups * n - 1 (validity words)
        "out_last": range(NM * FM + 1),            # n * chunks - 1 (output beats)
    })


def run_constants(cfg, n: int, chunks: int, g: int, nnz: int, lines_d: int,
                  dense_groups: int) -> dict:
    """The values of :func:`run_layout` for an accepted command, as the core derives them (for
    tests of single components and for reading waveforms)."""
    ls = cfg.lines - lines_d
    return {"n": n, "f": chunks, "g": g, "nnz": nnz, "ld": lines_d, "ls": ls,
            "dense_lines": (1 << lines_d) - 1, "dgroups": dense_groups,
            "s_period": max(ls, chunks), "s_win": min(ls, chunks), "ncols": n - g,
            "f_last": chunks - 1, "n_last": n - 1, "dv_last": dense_groups * n - 1,
            "out_last": n * chunks - 1}


# --- buffer words -------------------------------------------------------------------------------

def entry_rc_layout(cfg):
    """An expanded CSC entry: its query row and its key column."""
    return data.StructLayout({"row": unsigned(col_bits(cfg)), "col": unsigned(col_bits(cfg))})


def entry_pos_layout():
    """An entry's row-order position: word and bank of the sparse score banks."""
    return data.StructLayout({"word": unsigned(16), "bank": unsigned(8)})


def lane_layout():
    """One lane of a dense score word: the score and its validity bit."""
    return data.StructLayout({"t": signed(T_BITS), "ok": 1})


def bank_layout(cfg):
    """One word of a sparse score bank: the score and its key column."""
    return data.StructLayout({"t": signed(T_BITS), "col": unsigned(col_bits(cfg))})


# --- issue decisions and the sideband that travels with them ------------------------------------

def sddmm_issue_layout(cfg):
    """Phase 1, one cycle of both engines: the Denser engine's key group, query row, dense word
    and chunk, the Sparser engine's entry group and chunk."""
    L, FM, NM = cfg.lines, cfg.chunks_max, cfg.n_max
    return data.StructLayout({
        "d": 1,                                        # the Denser engine issues
        "d_gbase": range(glob_depth(cfg) + L + 1),     # first global key of the group
        "d_row": range(NM + 1),
        "d_word": range(dense_depth(cfg) + NM + 1),    # dense score / validity word
        "d_chunk": range(FM + 1),
        "s": 1,                                        # the Sparser engine issues
        "s_kbase": range(cfg.nnz_max + L + 1),         # first entry of the group
        "s_chunk": range(FM + 1),
    })


def dense_op_layout(cfg):
    """Phase 2, one cycle of the Denser engine: its row, key group and chunk."""
    L, FM, NM = cfg.lines, cfg.chunks_max, cfg.n_max
    return data.StructLayout({
        "op": 1,                                       # an op is issued
        "leave": 1,                                    # the engine leaves its row (op or skip)
        "row": range(NM + 1),
        "word": range(dense_depth(cfg) + NM + 1),      # dense score word of (group, row)
        "gbase": range(glob_depth(cfg) + L + 1),
        "chunk": range(FM + 1),
    })


def pair_layout(cfg):
    """Phase 2, one Sparser line in one cycle: its (entry, chunk) pair."""
    return data.StructLayout({
        "v": 1,
        "b": 1,                                        # the entry is in row B (else row A)
        "chunk": range(cfg.chunks_max),
        "score_bank": range(cfg.lines),                # the bank holding the entry's score
        "acc_bank": 1,                                 # accumulator bank: its row's parity
    })


def score_tag_layout(cfg):
    """Phase 1, a line's sideband from the issue to its score: valid, in range (validity bit or
    entry within nnz), first/last chunk of the dot product, row-order position, column, row."""
    return data.StructLayout({
        "v": 1, "ok": 1, "first": 1, "last": 1,
        "pos": entry_pos_layout(), "col": unsigned(col_bits(cfg)), "row": unsigned(col_bits(cfg)),
    })


def score_layout(cfg):
    """Phase 1, a line's score leaving its requantiser: valid, the score and its sideband."""
    return data.StructLayout({
        "v": 1, "t": signed(T_BITS), "ok": 1,
        "pos": entry_pos_layout(), "col": unsigned(col_bits(cfg)), "row": unsigned(col_bits(cfg)),
    })


def spmm_tag_layout(cfg):
    """Phase 2, the engines' sideband shared by all lines: a dense op (and its bank, first
    chunk, chunk), the Denser engine leaving its row, the Sparser engine leaving row A (its
    bank)."""
    return data.StructLayout({"d": 1, "dlast": 1, "dbank": 1, "dfirst": 1,
                              "dchunk": range(cfg.chunks_max + 1), "send": 1, "sbank": 1})


def line_tag_layout(cfg):
    """Phase 2, a Sparser line's sideband: pair valid, chunk, accumulator bank."""
    return data.StructLayout({"v": 1, "chunk": range(cfg.chunks_max), "bank": 1})


def max_update_layout(cfg, lanes: int):
    """A row-max update: valid, the row, candidate scores (the row's max is raised to theirs)."""
    return data.StructLayout({"v": 1, "row": unsigned(col_bits(cfg)),
                              "t": data.ArrayLayout(signed(T_BITS), lanes)})


def row_max_layout():
    """The row maxima of one row, one per engine."""
    return data.StructLayout({"dense": signed(T_BITS), "sparse": signed(T_BITS)})
