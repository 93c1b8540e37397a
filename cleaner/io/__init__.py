"""Reading and writing data: webdataset shards (robust tar reading), decoding
with status codes, the clip-retrieval compatible embedding cache, the sidecar
schema and its reader/writer, and atomic writes.

Nothing here knows a method's maths; the methods declare their columns in the
registry and :mod:`.schema` reads them from there.
"""
