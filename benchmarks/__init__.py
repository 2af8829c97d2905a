"""xent's benchmarks: ``python -m benchmarks`` (see benchmarks/registry.py)."""
