"""Benchmark: the broker against hello-world and the floor of its work (see run.py)."""
