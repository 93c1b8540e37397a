"""OSA (one-step anti-noise): the scorer (cosine vs the debiased boundary beta),
its training-side weights, and its declaration for the registry (method.py)."""
