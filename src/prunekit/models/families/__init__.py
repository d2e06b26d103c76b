"""One module per model family: each describes its blocks, projections and head on the adapter contract."""
