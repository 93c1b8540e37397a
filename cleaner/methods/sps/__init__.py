"""SPS (proxy points): the scorer (in-batch loss, GMM partition, proxies and
soft labels), its training loss, and its declaration for the registry (method.py)."""
