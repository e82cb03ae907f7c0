"""bertbatch: schemas."""
