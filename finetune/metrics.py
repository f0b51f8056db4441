"""Retrieval recall@k, computed as LAION CLIP_benchmark's `zeroshot_retrieval` does.

Pure functions over embeddings: they know nothing of models or files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """Per query (row): the fraction of its positives that are among its top-k scored columns."""
    topk = torch.topk(scores, k, dim=1).indices
    true_positives = positive_pairs.gather(1, topk).sum(dim=1)
    return true_positives / positive_pairs.sum(dim=1)


def retrieval_metrics(
    image_embeddings: np.ndarray | torch.Tensor,
    text_embeddings: np.ndarray | torch.Tensor,
    text_to_image: Sequence[int],
    recall_k: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """`image_retrieval_recall@k` (text->image) and `text_retrieval_recall@k` (image->text).

    Several captions may belong to one image (`text_to_image[i]` is caption i's image). A query
    counts as a hit when at least one of its positives is in the top k, as in CLIP_benchmark.
    Embeddings are expected L2-normalised. k larger than the gallery is clamped to its size
    (CLIP_benchmark would raise).
    """
    images = torch.as_tensor(np.asarray(image_embeddings), dtype=torch.float32)
    texts = torch.as_tensor(np.asarray(text_embeddings), dtype=torch.float32)
    scores = texts @ images.T  # (n_texts, n_images)
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(texts)), torch.as_tensor(list(text_to_image))] = True
    metrics = {}
    for k in recall_k:
        hits_t2i = recall_at_k(scores, positive_pairs, min(k, scores.shape[1])) > 0
        hits_i2t = recall_at_k(scores.T, positive_pairs.T, min(k, scores.shape[0])) > 0
        metrics[f"image_retrieval_recall@{k}"] = hits_t2i.float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = hits_i2t.float().mean().item()
    return metrics
