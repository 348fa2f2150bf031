"""Host side of the UART link (:mod:`vitaccel.boards.hostlink`): build frames, parse responses.

``HostClient(transport)`` works over anything with ``write(bytes)`` and ``read(n) -> bytes`` (a
``serial.Serial`` from pyserial, or the simulated UART in the tests). :func:`open_serial` imports
pyserial lazily, so nothing here needs it installed.

>>> client = HostClient(open_serial("/dev/ttyUSB0"))             # doctest: +SKIP
>>> client.identify().unit_id                                   # doctest: +SKIP
>>> outputs, cycles = client.run({"x": beats}, {"y": len(beats)})  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vitaccel.result import Result

from .hostlink_protocol import (ERR, MAGIC, OK, SYNC, TAG_BEAT, TAG_END, VERSION, ErrCode, Op,
                                beat_bytes, unit_id_of)

__all__ = ["HostClient", "Identity", "LinkError", "LinkTimeout", "open_serial", "unit_id_of"]


class LinkError(RuntimeError):
    """The board answered with an error, or with bytes that break the protocol."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class LinkTimeout(LinkError):
    """The board did not answer, or made no progress on a transfer."""


@dataclass(frozen=True)
class Identity:
    """What PING reports: which bitstream is loaded and the shape of its unit."""
    unit_id: int
    version: int
    rx_depth: int
    in_widths: list[int] = field(default_factory=list)
    out_widths: list[int] = field(default_factory=list)
    plain_in_widths: list[int] = field(default_factory=list)
    plain_out_widths: list[int] = field(default_factory=list)


def open_serial(port: str, baud: int = 115200, timeout: float = 1.0):
    """Open a serial port with pyserial (imported here, so pyserial is only needed on a real host)."""
    try:
        import serial
    except ImportError as exc:       # pragma: no cover - depends on the host
        raise ImportError("open_serial needs pyserial: pip install pyserial") from exc
    return serial.Serial(port, baudrate=baud, timeout=timeout)


def _frame(op, port=0, n=0, payload=b""):
    return bytes([SYNC, int(op), port & 0xFF, n & 0xFF, (n >> 8) & 0xFF]) + bytes(payload)


class HostClient:
    """Talks to a :class:`~vitaccel.boards.hostlink.HostLink` over ``transport``.

    ``ports`` (optional) = the unit's ``(ins, outs, plain_ins, plain_outs)`` ``{name: width}``
    dicts (from :func:`vitaccel.rtl.common.ports.stream_ports` / ``plain_ports``), so ports can be
    named; without it, ports are indices and widths come from :meth:`identify`. ``unit_id`` (int
    or str), when given, is checked against the board on first use.
    ``max_idle_rounds``: :meth:`run` / :meth:`write` / :meth:`read` give up with
    :class:`LinkTimeout` after this many consecutive commands without progress.
    """

    def __init__(self, transport, ports=None, unit_id=None, max_idle_rounds=64):
        self.transport = transport
        self._ports = None if ports is None else tuple(dict(p) for p in ports)
        self._expected_id = None if unit_id is None else unit_id_of(unit_id)
        self._identity: Identity | None = None
        self.max_idle_rounds = max_idle_rounds

    # --- low level --------------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.transport.read(n - len(data))
            if not chunk:
                raise LinkTimeout(f"board sent {len(data)} of {n} expected bytes")
            data += chunk
        return data

    def _command(self, op, port=0, n=0, payload=b"") -> None:
        """Send one frame and consume the status byte (raises :class:`LinkError` on ERR)."""
        self.transport.write(_frame(op, port, n, payload))
        head = self._read(1)[0]
        if head == OK:
            return
        if head == ERR:
            code = self._read(1)[0]
            try:
                name = ErrCode(code).name.lower()
            except ValueError:
                name = f"code {code}"
            raise LinkError(f"board rejected {Op(op).name if op in Op._value2member_map_ else op}"
                            f" (port {port}): {name}", code=code)
        raise LinkError(f"bad response byte 0x{head:02x} to opcode 0x{int(op):02x}")

    def raw(self, frame: bytes, nbytes: int) -> bytes:
        """Send raw bytes and read ``nbytes`` back (for debugging and protocol tests)."""
        self.transport.write(bytes(frame))
        return self._read(nbytes)

    # --- identity and port lookup ---------------------------------------------------------
    def identify(self) -> Identity:
        """PING: magic, version, unit id and port widths of the loaded bitstream."""
        self._command(Op.PING)
        head = self._read(4 + 1 + 2 + 2 + 4)
        if head[:4] != MAGIC:
            raise LinkError(f"bad magic {head[:4]!r} (expected {MAGIC!r}): not a vitaccel link")
        version = head[4]
        if version != VERSION:
            raise LinkError(f"board speaks link version {version}, this host {VERSION}")
        unit_id = int.from_bytes(head[5:7], "little")
        rx_depth = int.from_bytes(head[7:9], "little")
        counts = list(head[9:13])
        body = self._read(2 * sum(counts))
        widths = [int.from_bytes(body[2 * i:2 * i + 2], "little") for i in range(sum(counts))]
        groups, pos = [], 0
        for c in counts:
            groups.append(widths[pos:pos + c])
            pos += c
        ident = Identity(unit_id, version, rx_depth, *groups)
        if self._ports is not None:
            mine = [list(p.values()) for p in self._ports]
            if mine != groups:
                raise LinkError(f"board's ports {groups} differ from the expected {mine}")
        if self._expected_id is not None and unit_id != self._expected_id:
            raise LinkError(f"board runs unit id 0x{unit_id:04x}, expected "
                            f"0x{self._expected_id:04x}")
        self._identity = ident
        return ident

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self.identify()
        return self._identity

    def _resolve(self, group: int, port) -> tuple[int, int]:
        """(index, width) of a port in group 0..3 given by name or index."""
        widths = [self.identity.in_widths, self.identity.out_widths,
                  self.identity.plain_in_widths, self.identity.plain_out_widths][group]
        if isinstance(port, str):
            if self._ports is None:
                raise ValueError(f"port {port!r} given by name, but the client has no `ports`")
            names = list(self._ports[group])
            if port not in names:
                kind = ["input stream", "output stream", "plain input", "plain output"][group]
                raise ValueError(f"{port!r} is not an {kind} (have {names})")
            port = names.index(port)
        if not 0 <= port < len(widths):
            raise ValueError(f"port index {port} out of range 0..{len(widths) - 1}")
        return port, widths[port]

    # --- commands ---------------------------------------------------------------------------
    def write_some(self, port, beats) -> int:
        """One WRITE frame (at most 65535 beats, and at most rx_depth bytes); returns how many
        beats the unit accepted before a stall timeout."""
        idx, width = self._resolve(0, port)
        nb = beat_bytes(width)
        beats = list(beats)
        if len(beats) > 0xFFFF or len(beats) * nb > self.identity.rx_depth:
            raise ValueError(f"{len(beats)} beats of {nb} B exceed one frame "
                             f"(rx_depth {self.identity.rx_depth} B)")
        mask = (1 << width) - 1
        payload = b"".join((int(b) & mask).to_bytes(nb, "little") for b in beats)
        self._command(Op.WRITE, idx, len(beats), payload)
        return int.from_bytes(self._read(2), "little")

    def write(self, port, beats) -> None:
        """Write all ``beats`` to an input stream, in chunks that fit the board's RX FIFO."""
        idx, width = self._resolve(0, port)
        chunk = max(1, self.identity.rx_depth // beat_bytes(width))
        beats, pos, idle = list(beats), 0, 0
        while pos < len(beats):
            took = self.write_some(idx, beats[pos:pos + chunk])
            pos += took
            idle = 0 if took else idle + 1
            if idle > self.max_idle_rounds:
                raise LinkTimeout(f"input stream {port!r} accepts no beats ({pos} of "
                                  f"{len(beats)} written)")

    def read_some(self, port, n: int) -> list[int]:
        """One READ frame: up to ``n`` beats (fewer if the unit stalls past the board timeout)."""
        idx, width = self._resolve(1, port)
        nb = beat_bytes(width)
        self._command(Op.READ, idx, n)
        beats = []
        while True:
            tag = self._read(1)[0]
            if tag == TAG_END:
                return beats
            if tag != TAG_BEAT or len(beats) >= n:
                raise LinkError(f"bad beat tag 0x{tag:02x} after {len(beats)} beats")
            beats.append(int.from_bytes(self._read(nb), "little"))

    def read(self, port, n: int) -> list[int]:
        """Read exactly ``n`` beats from an output stream."""
        out, idle = [], 0
        while len(out) < n:
            got = self.read_some(port, min(n - len(out), 0xFFFF))
            out += got
            idle = 0 if got else idle + 1
            if idle > self.max_idle_rounds:
                raise LinkTimeout(f"output stream {port!r} produced {len(out)} of {n} beats")
        return out

    def cycles(self) -> int:
        """The board's 32-bit cycle counter (see the hostlink docstring for what it counts)."""
        self._command(Op.CYCLES)
        return int.from_bytes(self._read(4), "little")

    def reset_cycles(self) -> None:
        self._command(Op.CYCLES_RESET)

    def reset_unit(self) -> None:
        """Pulse the unit's reset (statics keep their values) and clear the cycle counter."""
        self._command(Op.RESET)

    def set(self, port, value: int) -> None:
        """Set a plain input (a static) to ``value``."""
        idx, width = self._resolve(2, port)
        nb = beat_bytes(width)
        self._command(Op.SET, idx, 1, (int(value) & ((1 << width) - 1)).to_bytes(nb, "little"))

    def status(self) -> dict:
        """Plain outputs (by name when ``ports`` was given, else by index) plus ``"_flags"``
        (link flags: overflow / framing / timeout bits; reading clears them)."""
        widths = self.identity.plain_out_widths
        self._command(Op.STATUS)
        flags = self._read(1)[0]
        total = sum(widths)
        word = int.from_bytes(self._read((total + 7) // 8), "little") if total else 0
        names = list(self._ports[3]) if self._ports is not None else list(range(len(widths)))
        out, shift = {}, 0
        for name, w in zip(names, widths):
            out[name] = (word >> shift) & ((1 << w) - 1)
            shift += w
        out["_flags"] = flags
        return out

    def run(self, inputs: dict, expect: dict, statics: dict | None = None,
            reset: bool = True) -> tuple[dict, int]:
        """Run a job: set ``statics``, stream ``inputs`` ({port: beats}) while collecting
        ``expect`` ({port: count}) beats, interleaved in chunks so that no unit deadlocks on a
        full output. Returns (outputs {port: beats}, board cycle counter)."""
        if reset:
            self.reset_unit()
        for port, value in (statics or {}).items():
            self.set(port, value)
        self.reset_cycles()
        pending = {p: list(b) for p, b in inputs.items()}
        outputs = {p: [] for p in expect}
        idle = 0
        while any(pending.values()) or any(len(outputs[p]) < c for p, c in expect.items()):
            progress = False
            for port, beats in pending.items():
                if beats:
                    _, width = self._resolve(0, port)
                    chunk = max(1, self.identity.rx_depth // beat_bytes(width))
                    took = self.write_some(port, beats[:chunk])
                    del beats[:took]
                    progress |= took > 0
            for port, count in expect.items():
                want = count - len(outputs[port])
                if want:
                    got = self.read_some(port, min(want, 0xFFFF))
                    outputs[port] += got
                    progress |= bool(got)
            idle = 0 if progress else idle + 1
            if idle > self.max_idle_rounds:
                raise LinkTimeout("no progress: " + ", ".join(
                    [f"{p}: {len(b)} beats unsent" for p, b in pending.items() if b]
                    + [f"{p}: {len(outputs[p])}/{c} beats read" for p, c in expect.items()]))
        return outputs, self.cycles()

    def run_job(self, job):
        """Run a :class:`vitaccel.sim.job.Job` (or anything with its ``inputs``, ``expect``,
        ``statics`` and ``status``) on the board; returns a :class:`vitaccel.result.Result`
        (cycles from the board's counter)."""
        outputs, cycles = self.run(job.inputs, job.expect, job.statics)
        status = self.status() if job.status else {}
        return Result(outputs=outputs, status={k: status[k] for k in job.status}, cycles=cycles)
