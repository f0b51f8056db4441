"""The offline demo, outside the product packages: a generated sample domain, the project's
small base model, the zero-shot vs fine-tuned pipeline and a live search through the Flow.

    python -m demo                  # make demo: data, eval, fine-tune, report, live search
    python -m demo base-model       # make base-model: rebuild assets/base-model
    python -m demo sample-data --domain target --n 200 --out data/target

Runs from a checkout (it starts `flow.yml` from the repository root).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The project's committed base model (a run folder), built by `make base-model`.
BASE_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "base-model"
