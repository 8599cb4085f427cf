"""Benchmarks (they print figures and write JSON) and the device harness (gpu_check.sh)."""
