"""The boards vitaccel builds for, and the top that puts a unit on one behind the UART host link.

Everything board-specific lives in :data:`BOARDS` (one row per board); :func:`board_top` and
:mod:`vitaccel.boards.build` read only that table.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import io

from .hostlink import HostLink

__all__ = ["Board", "BOARDS", "board_names", "get_board", "board_top", "BoardTop"]


@dataclass(frozen=True)
class Board:
    name: str
    platform_module: str
    platform_class: str
    family: str                          # "ice40" or "ecp5" (selects the nextpnr flavour)
    clock_key: str                       # the clock's key in nextpnr's report.json "fmax"
    synth_opts: str = ""
    nextpnr_opts: tuple[str, ...] = ()
    bitstream_ext: str = "bin"
    led_busy: tuple[str, int] = ("led", 0)
    led_error: tuple[str, int] = ("led", 1)
    # HostLink(register_outputs=...): skid buffers on the unit's output streams (see HostLink);
    # off on the iCE40, whose 5,280 cells the FACT unit nearly fills
    register_outputs: bool = False

    def platform(self):
        """A fresh platform instance (amaranth_boards is imported only here)."""
        import importlib
        return getattr(importlib.import_module(self.platform_module), self.platform_class)()


BOARDS = {
    "icebreaker": Board(
        name="icebreaker",
        platform_module="amaranth_boards.icebreaker", platform_class="ICEBreakerPlatform",
        family="ice40", clock_key="cd_sync.clk",
        synth_opts="-dsp",                    # use the SB_MAC16s (toolchain.md)
        bitstream_ext="bin",
        led_busy=("led_g", 0), led_error=("led_r", 0)),
    "ulx3s": Board(
        name="ulx3s",
        platform_module="amaranth_boards.ulx3s", platform_class="ULX3S_85F_Platform",
        family="ecp5", clock_key="$glbnet$cd_sync.clk",
        bitstream_ext="bit",
        led_busy=("led", 0), led_error=("led", 1), register_outputs=True),
}


def board_names() -> list[str]:
    return sorted(BOARDS)


def get_board(board) -> Board:
    if isinstance(board, Board):
        return board
    try:
        return BOARDS[board]
    except KeyError:
        raise ValueError(f"unknown board {board!r}; choose one of {board_names()}") from None


class BoardTop(Elaboratable):
    """A unit behind a :class:`HostLink` on a board's default clock, UART and two LEDs
    (busy, error). ``link`` is the HostLink (its ``divisor`` is known after construction)."""

    def __init__(self, unit, board, baud=115200, unit_id=0, clk_freq=None, **link_kwargs):
        self.board = get_board(board)
        self.unit = unit
        self.baud = int(baud)
        if clk_freq is None:
            plat = self.board.platform()
            clk_freq = plat.default_clk_frequency
        self.clk_freq = float(clk_freq)
        divisor = int(round(self.clk_freq / self.baud))
        if divisor < 4:
            self._MustUse__silence = True
            raise ValueError(f"baud {baud} is too fast for a {self.clk_freq / 1e6:g} MHz clock")
        link_kwargs.setdefault("register_outputs", self.board.register_outputs)
        self.link = HostLink(unit, divisor=divisor, unit_id=unit_id, **link_kwargs)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        if platform is None:          # simulation: no pins, drive link.rx / read link.tx directly
            return m
        b = self.board
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        m.d.comb += [link.rx.eq(rx_buf.i), tx_buf.o.eq(link.tx)]
        for i, (res, num) in enumerate((b.led_busy, b.led_error)):
            pin = platform.request(res, num, dir="-")
            m.submodules[f"led_buf{i}"] = buf = io.Buffer("o", pin)
            m.d.comb += buf.o.eq(link.busy if i == 0 else link.error)
        return m


def board_top(unit_component, board, baud=115200, unit_id=0, **link_kwargs) -> BoardTop:
    """The top to build for ``board`` ("icebreaker" or "ulx3s"): ``unit_component`` behind a
    UART :class:`HostLink` at ``baud`` on the board's default clock, LED 0 = busy, LED 1 = error.
    Extra keyword arguments go to :class:`HostLink` (``rx_depth``, ``timeout``,
    ``register_outputs``: by default the board's own setting)."""
    return BoardTop(unit_component, board, baud=baud, unit_id=unit_id, **link_kwargs)
