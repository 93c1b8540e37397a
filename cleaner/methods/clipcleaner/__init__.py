"""CLIPCleaner: label-noise selection for classification shards (zero-shot and
induced classifiers, consistency and per-class GMM selectors), MixFix as its
training loss, and its declaration for the registry (method.py)."""
