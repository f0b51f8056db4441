"""The exact scan: hnswlib's shape and cosine distance, best first, against a plain sort."""

from __future__ import annotations

import numpy as np

from search.exact_knn import exact_knn


def test_top_k_agrees_with_a_full_sort():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.arange(100, 150, dtype=np.int64)
    queries = rng.normal(size=(4, 8)).astype(np.float32) * 3  # any norm
    found, distances = exact_knn(queries, 5, labels, vectors)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.argsort(-(unit @ vectors.T), axis=1)[:, :5]
    assert found.tolist() == labels[expected].tolist()
    assert found.shape == distances.shape == (4, 5)
    assert np.all(np.diff(distances, axis=1) >= 0)
    np.testing.assert_allclose(
        distances, 1 - np.sort(unit @ vectors.T, axis=1)[:, ::-1][:, :5], atol=1e-6
    )


def test_k_is_clamped_to_the_vectors_there_are():
    vectors = np.eye(3, dtype=np.float32)
    found, distances = exact_knn(np.array([[1.0, 0.1, 0.0]]), 10, np.array([7, 8, 9]), vectors)
    assert found.tolist() == [[7, 8, 9]] and distances.shape == (1, 3)
    assert distances[0, 0] < distances[0, 1] < distances[0, 2]
