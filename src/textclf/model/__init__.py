"""Model directory format, building/loading models, and batch prediction."""
