"""The host link's wire protocol in numbers: framing bytes, opcodes, error codes, flag bits.

Plain Python, no Amaranth: the gateware (:mod:`.hostlink_parser`) and the host
(:mod:`.host`) both take their constants from here, so they cannot drift apart. The protocol
itself is described in :mod:`vitaccel.boards.hostlink`, which re-exports these names.
"""
from __future__ import annotations

import enum
import zlib

__all__ = ["SYNC", "OK", "ERR", "MAGIC", "VERSION", "TAG_BEAT", "TAG_END", "FLAG_OVERFLOW",
           "FLAG_FRAMING", "FLAG_TIMEOUT", "IDLE_BITS", "Op", "ErrCode", "beat_bytes",
           "unit_id_of", "identity_bytes"]

SYNC = 0xA5
OK = 0x4B
ERR = 0x45
MAGIC = b"VTAX"
VERSION = 1
TAG_BEAT = 0x01
TAG_END = 0x00
FLAG_OVERFLOW = 1 << 0
FLAG_FRAMING = 1 << 1
FLAG_TIMEOUT = 1 << 2
IDLE_BITS = 12          # line idle this many bit times ends an error's drop phase


class Op(enum.IntEnum):
    PING = 0x01
    WRITE = 0x02
    READ = 0x03
    CYCLES = 0x04
    CYCLES_RESET = 0x05
    STATUS = 0x06
    SET = 0x07
    RESET = 0x08


class ErrCode(enum.IntEnum):
    OPCODE = 1
    PORT = 2


def beat_bytes(width: int) -> int:
    """Bytes per beat of a ``width``-bit port (at least 1)."""
    return max(1, (width + 7) // 8)


def unit_id_of(name_or_id) -> int:
    """16-bit unit id: ints pass through, strings map to the low 16 bits of their CRC-32."""
    if isinstance(name_or_id, str):
        return zlib.crc32(name_or_id.encode()) & 0xFFFF
    uid = int(name_or_id)
    if not 0 <= uid < 1 << 16:
        raise ValueError(f"unit_id must fit in 16 bits, got {uid}")
    return uid


def identity_bytes(unit_id: int, rx_depth: int, groups) -> bytes:
    """The PING response after the OK byte: magic, version, unit id, RX FIFO depth, the port
    count of each group, then every port's width. ``groups`` = the four ``{name: width}`` dicts
    (input streams, output streams, plain inputs, plain outputs), in that order."""
    b = bytearray(MAGIC)
    b.append(VERSION)
    b += int(unit_id).to_bytes(2, "little") + int(rx_depth).to_bytes(2, "little")
    b += bytes(len(g) for g in groups)
    for g in groups:
        for w in g.values():
            b += int(w).to_bytes(2, "little")
    return bytes(b)
