"""One module per method, each a fit/transform object on arrays, no I/O.

- :mod:`.osa`         OSA weights (cosine vs the debiased boundary beta)
- :mod:`.sdd`         SDD self-drop mask, confidence weight, memory bank
- :mod:`.sps`         SPS partitions, proxies, soft labels
- :mod:`.clipcleaner` CLIPCleaner label-noise selection
"""
