"""Benchmarks: ``python -m bench.<name>`` prints ``BENCH <name> <value> <unit>`` lines."""
