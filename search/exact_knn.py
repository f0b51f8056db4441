"""Exact nearest neighbours by cosine over a handful of vectors: the scan a store falls back on.

A filtered search scans the matching vectors this way when that is cheaper than a graph walk
(`search.filter_planner`), and any search does when the graph cannot reach enough live vectors.
The results have hnswlib's shape and distance (``1 - cosine``), so both paths score alike.
"""

from __future__ import annotations

import numpy as np


def exact_knn(
    queries: np.ndarray, k: int, labels: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, distances)``, each ``(len(queries), min(k, len(labels)))``, best first: the
    top ``k`` of the unit ``vectors`` (one row per label) for each query row (any norm)."""
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    # hnswlib's cosine distance, 1 - dot of unit vectors, so that scores match a walk's
    distances = 1.0 - unit @ vectors.T
    k = min(k, len(labels))
    top = np.argpartition(distances, k - 1, axis=1)[:, :k]
    top_d = np.take_along_axis(distances, top, axis=1)
    order = np.argsort(top_d, axis=1, kind="stable")
    return labels[np.take_along_axis(top, order, axis=1)], np.take_along_axis(top_d, order, 1)
