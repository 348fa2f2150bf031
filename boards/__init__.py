"""Board tops (ULX3S, iCEBreaker), UART host link, YoWASP builds and report parsing.

Nothing here imports :mod:`vitaccel.sim` (``tests/test_boards_layering.py`` checks it).

* :mod:`.hostlink` -- ``HostLink``: a unit behind an 8N1 UART with a framed protocol (write/read
  stream beats, set statics, read status and a cycle counter, identify, reset); the protocol is
  documented in that module's docstring. It connects the parts below:
  :mod:`.uart` (``UARTRx``/``UARTTx``: bits <-> byte streams), :mod:`.hostlink_parser`
  (``HostLinkParser``: the protocol on byte streams) and :mod:`.hostlink_protocol` (the
  protocol's constants, shared with the host side).
* :mod:`.host` -- ``HostClient(transport)``: the host side (``run``/``run_job`` stream a whole job);
  ``open_serial(port)`` imports pyserial lazily.
* :mod:`.platforms` -- the board table ``BOARDS`` ("icebreaker", "ulx3s") and
  ``board_top(unit, board, baud)``.
* :mod:`.build` -- ``build(top_or_unit, board, freq_mhz=None)`` runs Yosys/nextpnr/pack through
  YoWASP and returns parsed numbers; ``format_report`` prints them; failures raise ``BuildError``.
"""
