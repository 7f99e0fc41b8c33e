"""Pure enrichment: profile folding, features and per-store model scoring (DataFrame in, DataFrame out)."""
