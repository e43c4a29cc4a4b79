"""Benchmarks: what a change costs a cluster, and what the caches buy it. See bench/run.py."""
