"""bertbatch: pipeline."""
