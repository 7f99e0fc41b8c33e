"""Jobs over history: training and registering the per-store models, recomputing profiles."""
