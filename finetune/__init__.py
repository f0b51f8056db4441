"""Fine-tune open_clip CLIP models on your own image-caption pairs, locally, on CPU or GPU.

import finetune
run = finetune.fit(model="ViT-B-32#openai", train_data="pairs.csv", eval_data="test.csv")
text = finetune.get_model(run.output, select_model="clip-text")
vectors = finetune.encode(text, ["a red dress", "a blue shirt"])
"""

import importlib

# Imported on first use, so that e.g. a search executor importing `finetune.towers` does not
# load the trainer and its data pipeline.
_API = {
    "fit": "finetune.train",
    "FitConfig": "finetune.train",
    "Run": "finetune.train",
    "get_model": "finetune.inference",
    "encode": "finetune.inference",
    "evaluate": "finetune.inference",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'finetune' has no attribute {name!r}")
