"""bertbatch: jobs."""
