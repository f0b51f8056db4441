"""Plain helpers that the client, the search service and the trainer share: the service's
documents, declared once (`documents`), image-caption data files read into pairs (`pairs`),
image files recognised and decoded (`images`), and batching (`batching`).

The bottom layer: it imports nothing of the project and neither torch, jina nor docarray, so
the client's base install (no torch) can index a data file with the same reader training uses.
"""
