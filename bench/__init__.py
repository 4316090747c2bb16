"""Benchmarks for FAQ Bot: each part measures the library against a peer or a physical limit (not tests)."""
