"""Training with the verdicts: the weights API other trainers use (weights:
Verdicts, --where expressions, webdataset stages, samplers) and the thin
trainer behind ``nclean train`` (trainer and the modules it calls)."""
