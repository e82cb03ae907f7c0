"""bertbatch benchmarks (not installed; run from the repository root)."""
