"""Benchmark case modules, one per problem family; each registers with ``benchmarks.registry.case``."""
