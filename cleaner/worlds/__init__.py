"""Synthetic worlds: the shapes world (images with compositional captions,
for the demo, tests and benchmarks), embedding mixtures with planted noise
(synthetic), and the demo that runs the whole pipeline on them."""
