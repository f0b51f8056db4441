"""The search core: encoders, the durable HNSW store and the search service, with no jina.

Everything the Flow's executors do is done here, on plain dataclasses, so that it can run in
one process (tests, benchmarks, the web page) and be served by thin jina adapters.
"""
