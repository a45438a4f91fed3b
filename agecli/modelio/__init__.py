"""Model files: checkpoints, the backends that run them, export, import, the shipped weights and packaging."""
