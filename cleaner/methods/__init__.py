"""The methods: one package per method, plus the pieces they share.

Each method package holds its scorer (a fit/transform object on arrays, no
I/O), its training-side loss, and ``method.py``, its declaration for the
registry (columns, options, fit / pools / transform hooks):

- :mod:`.osa`         OSA weights (cosine vs the debiased boundary beta)
- :mod:`.sdd`         SDD self-drop mask, confidence weight, memory bank
- :mod:`.sps`         SPS partitions, proxies, soft labels
- :mod:`.clipcleaner` CLIPCleaner label-noise selection, MixFix

Shared: :mod:`.registry` (what a method declares), :mod:`.catalog` (the
methods nclean knows: the one place to register a new one), :mod:`.base`
(Pairs), :mod:`.beta`, :mod:`.gmm`, :mod:`.neighbors`, :mod:`.sampling`,
:mod:`.contrastive` (InfoNCE pieces of the losses), :mod:`.losses` (every
method's training loss gathered for the trainer).
"""
