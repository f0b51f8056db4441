"""Our recall@k equals CLIP_benchmark's `zeroshot_retrieval.evaluate` on the same embeddings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune.metrics import retrieval_metrics

zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


class _LookupModel(torch.nn.Module):
    """Stands in for a CLIP: 'images' and 'tokens' are row indices into fixed embeddings."""

    def __init__(self, image_emb, text_emb):
        super().__init__()
        self.image_emb, self.text_emb = image_emb, text_emb

    def encode_image(self, idx):
        return self.image_emb[idx]

    def encode_text(self, idx):
        return self.text_emb[idx]


def _clip_benchmark_metrics(image_emb, text_emb, captions_per_image, recall_k):
    """Run CLIP_benchmark's own evaluate() over a loader of (image, [captions]) batches."""
    n_images = len(image_emb)
    caption_ids, start = [], 0
    for n in captions_per_image:
        caption_ids.append([str(start + j) for j in range(n)])
        start += n
    batches = [
        (torch.arange(i, min(i + 7, n_images)), caption_ids[i : i + 7])
        for i in range(0, n_images, 7)
    ]

    class Loader(list):
        batch_size = 7

    def tokenizer(texts):
        return torch.tensor([int(t) for t in texts])

    model = _LookupModel(torch.as_tensor(image_emb), torch.as_tensor(text_emb))
    return zeroshot_retrieval.evaluate(
        model, Loader(batches), tokenizer, device="cpu", amp=False, recall_k_list=list(recall_k)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_equals_clip_benchmark(seed):
    rng = np.random.default_rng(seed)
    n_images, dim = 40, 16
    captions_per_image = rng.integers(1, 6, size=n_images)  # several captions per image
    image_emb = F.normalize(
        torch.randn(n_images, dim, generator=torch.Generator().manual_seed(seed)), dim=-1
    )
    text_to_image = np.repeat(np.arange(n_images), captions_per_image)
    # Captions near their image, with enough noise that recall@1 is far from perfect.
    text_emb = F.normalize(
        image_emb[text_to_image] + 0.9 * torch.randn(len(text_to_image), dim), dim=-1
    )
    recall_k = (1, 5, 10)

    ours = retrieval_metrics(image_emb.numpy(), text_emb.numpy(), text_to_image, recall_k)
    theirs = _clip_benchmark_metrics(
        image_emb.numpy(), text_emb.numpy(), captions_per_image, recall_k
    )

    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-7), key
    # the comparison is informative: neither trivial nor perfect
    assert 0.05 < ours["image_retrieval_recall@1"] < 0.95


def test_hand_computed_example():
    # 3 images, 4 captions; caption 3 belongs to image 0 but is closest to image 2.
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.1, 0, 0.9]], dtype=np.float32)
    m = retrieval_metrics(images, texts, [0, 1, 2, 0], recall_k=(1, 2))
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert m["image_retrieval_recall@2"] == pytest.approx(1.0)
    # image->text: every image has a caption ranked first
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)


def test_k_larger_than_gallery_is_clamped():
    images = np.eye(2, dtype=np.float32)
    m = retrieval_metrics(images, images, [0, 1], recall_k=(10,))
    assert m["image_retrieval_recall@10"] == 1.0
