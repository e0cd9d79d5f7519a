"""Training: run configuration and presets, Lightning module and data, `fit`."""
