"""Benchmarks: a separate command (``kube-proxy-py bench …``), never part of the tests."""
