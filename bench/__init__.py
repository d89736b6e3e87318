"""Benchmarks: speed and memory targets, measured beside their baselines (``python -m bench``).

Speed targets live here and in docs/PERFORMANCE.md, never in the tests.
"""
