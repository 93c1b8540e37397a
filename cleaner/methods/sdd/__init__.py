"""SDD (self-drop, dual weight): the scorer (GMM on the cosine, drop mask,
confidence weight, memory-bank neighbours), its training loss, and its
declaration for the registry (method.py)."""
