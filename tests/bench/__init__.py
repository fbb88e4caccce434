"""Benchmarks (`make bench`): ratios against a peer or floor measured in the same run."""
