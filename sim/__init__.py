"""Simulation: stream harness (Amaranth simulator and cocotb), runner, testbenches."""
