"""The trainer's torch `Dataset` over image-caption pairs (`imagepairs.pairs` reads them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from imagepairs.images import load_image
from imagepairs.pairs import Pair


class PairDataset(torch.utils.data.Dataset):
    """(image tensor, token ids) per pair; images are decoded when the item is fetched."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
    ):
        self.pairs = list(pairs)
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        image = self.preprocess(load_image(pair.image))
        tokens = torch.as_tensor(self.tokenizer([pair.caption]))[0].long()
        return image, tokens
