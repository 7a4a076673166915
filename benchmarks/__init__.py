"""Benchmarks of molmo-batch: scripts that measure ratios against a baseline on this machine.

Run everything with ``python -m benchmarks.run_all`` (or one item, e.g. ``python -m benchmarks.bench_decode``);
``--quick`` runs each on a tiny corpus for correctness only. Figures and their limits: docs/benchmarks.md.
"""
