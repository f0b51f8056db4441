"""The fine-tuning loop: CLIP contrastive loss on image-caption pairs, both towers (or one).

Read top to bottom: set up (distributed, model, data, optimiser), train epochs with periodic
evaluation, keep the best weights, write the two towers. Works on CPU and GPU, and under
`torchrun --nproc_per_node N -m finetune fit ...` (gloo on CPU, nccl on GPU), where the batch
size is the global batch and negatives come from the whole global batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from finetune.accumulation import autocast_for, contrastive_backward, micro_batches
from finetune.artifact import RUN_CONFIG, load_model, load_towers_into, save_towers
from finetune.atomic import write_json
from finetune.checkpoint import CHECKPOINT, TrainState, load_checkpoint, save_checkpoint
from finetune.data import FORMATS, PairDataset, PairSet, detect_format, load_pairs
from finetune.distributed import (
    Dist,
    barrier,
    broadcast_flag,
    data_parallel,
    setup_distributed,
)
from finetune.evaluation import DEFAULT_RECALL_K, default_workers, evaluate_bundle
from finetune.loss import LOSSES, create_loss
from finetune.models import CLIPBundle
from finetune.text_length import RealLengthCLIP, supports_trimming, trimmed_collate

log = logging.getLogger("finetune")

METRICS_FILE = "metrics.jsonl"
# CLIP clamps its temperature so logits stay below 100 (as in the CLIP paper and open_clip).
MAX_LOGIT_SCALE = math.log(100)


@dataclass
class FitConfig:
    """Every option of `fit`; the CLI's flags carry the same names."""

    model: str = "ViT-B-32#openai"
    train_data: str = ""
    eval_data: str | None = None
    output: str = "runs/finetune"
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-6
    loss: str = "CLIPLoss"
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    grad_accum_steps: int = 1
    grad_clip_norm: float | None = None
    precision: Literal["fp32", "amp", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int | None = None
    seed: int = 0
    augment: bool = False
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    eval_every: int = 1
    recall_k: tuple[int, ...] = DEFAULT_RECALL_K
    monitor: str = "image_retrieval_recall@5"
    early_stopping_patience: int | None = None
    resume: str | None = None
    wise_ft: float | None = None
    max_steps: int | None = None
    # data-format options, passed to finetune.data.load_pairs for train and eval data
    format: str = "auto"
    image_root: str | None = None
    split: str | None = None
    eval_split: str | None = None
    prompt: str | None = None
    csv_img_key: str | None = None
    csv_caption_key: str | None = None
    csv_separator: str | None = None
    max_bad_fraction: float = 0.05
    max_pairs: int | None = None
    save_dtype: Literal["float32", "float16"] = "float32"
    progress: bool = True

    @classmethod
    def choices(cls) -> dict[str, tuple[str, ...]]:
        """The allowed values of each field that has a fixed set: its `Literal`, or the
        registry it names (data formats, losses)."""
        hints = get_type_hints(cls)
        out = {name: get_args(t) for name, t in hints.items() if get_origin(t) is Literal}
        return {**out, "format": ("auto", *FORMATS), "loss": tuple(LOSSES)}

    def validate(self) -> None:
        for name, allowed in self.choices().items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.train_data:
            raise ValueError("train_data is required: a CSV / TSV / captions.txt / JSON file")
        positive = ("epochs", "batch_size", "grad_accum_steps", "eval_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.wise_ft is not None and not 0.0 <= self.wise_ft <= 1.0:
            raise ValueError(f"wise_ft must be in [0, 1], got {self.wise_ft}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


@dataclass
class Run:
    """What `fit` returns: where the artifact is and what was measured."""

    output: Path
    config: dict[str, Any]
    train_loss: list[float] = field(default_factory=list)
    eval_metrics: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    steps: int = 0
    samples_per_second: float = 0.0

    @property
    def text_tower(self) -> Path:
        return self.output / "clip-text"

    @property
    def vision_tower(self) -> Path:
        return self.output / "clip-vision"

    @property
    def final_metrics(self) -> dict[str, Any] | None:
        return self.eval_metrics[-1] if self.eval_metrics else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_data(cfg: FitConfig, path: str, split: str | None) -> PairSet:
    pairs = load_pairs(
        path,
        format=cfg.format,
        image_root=cfg.image_root,
        split=split,
        prompt=cfg.prompt,
        csv_img_key=cfg.csv_img_key,
        csv_caption_key=cfg.csv_caption_key,
        csv_separator=cfg.csv_separator,
        max_bad_fraction=cfg.max_bad_fraction,
        log=log,
    )
    if cfg.max_pairs is not None:
        pairs.pairs = pairs.pairs[: cfg.max_pairs]
    return pairs


def _eval_split(cfg: FitConfig) -> str | None:
    """Karpathy files hold every split: evaluate on `test` unless told otherwise."""
    if cfg.eval_split:
        return cfg.eval_split
    fmt = cfg.format if cfg.format != "auto" else detect_format(cfg.eval_data)
    return "test" if fmt == "karpathy" else None


def lr_at(step: int, total_steps: int, cfg: FitConfig) -> float:
    """Linear warmup, then constant or cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * cfg.learning_rate * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.learning_rate


def make_optimizer(model: torch.nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    # As CLIP and open_clip do: no weight decay on gains, biases and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bias" in name or "logit_scale" in name or "ln" in name
        (no_decay if exclude else decay).append(p)
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": cfg.weight_decay},
    ]
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_cls(groups, lr=cfg.learning_rate)


def lock_towers(model: torch.nn.Module, cfg: FitConfig) -> None:
    """LiT-style: freeze a tower, optionally keeping its last N groups/layers trainable."""
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("both towers and the temperature are locked: nothing to train")


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (main process only)."""

    def __init__(self, path: Path | None, append: bool = False):
        self.file = open(path, "a" if append else "w", encoding="utf-8") if path else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def fit(config: FitConfig | None = None, **kwargs: Any) -> Run:
    """Fine-tune a CLIP on image-caption pairs and write its two towers to `output`.

    Pass a `FitConfig` or its fields as keyword arguments, e.g.
    `fit(model="ViT-B-32#openai", train_data="pairs.csv", eval_data="test.csv", epochs=5)`.
    """
    cfg = dataclasses.replace(config, **kwargs) if config else FitConfig(**kwargs)
    cfg.recall_k = tuple(cfg.recall_k)
    cfg.validate()
    env = setup_distributed(cfg.device)
    if cfg.batch_size % env.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is the global batch and must divide evenly over "
            f"{env.world_size} processes"
        )
    out = Path(cfg.resume or cfg.output)
    seed_everything(cfg.seed)

    # --- model, data, optimiser ------------------------------------------------------------
    bundle = load_model(cfg.model, device=env.device)
    model = bundle.model
    initial_state = copy.deepcopy(model.state_dict()) if cfg.wise_ft is not None else None
    lock_towers(model, cfg)
    train_set = load_data(cfg, cfg.train_data, cfg.split)
    eval_set = load_data(cfg, cfg.eval_data, _eval_split(cfg)) if cfg.eval_data else None
    workers = default_workers() if cfg.workers is None else cfg.workers
    dataset = PairDataset(train_set.pairs, bundle.preprocess(train=cfg.augment), bundle.tokenizer)
    # One sampler for 1 or N processes: the union of the N per-rank batches of step k is the
    # single-process batch of step k, so results don't depend on the number of processes.
    sampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed
    )
    # Causal mask + argmax pooling: each text batch is cut to its longest caption, and the model
    # forward runs the text tower at that length (same loss and gradients, less work).
    real_length = supports_trimming(bundle.model_cfg)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size // env.world_size // cfg.grad_accum_steps or 1,
        sampler=sampler,
        collate_fn=trimmed_collate if real_length else None,
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        persistent_workers=workers > 0,
    )
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "amp")
    loss_fn = create_loss(cfg.loss)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum_steps)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)

    run = Run(output=out, config=_run_config(cfg, bundle, env))
    state = TrainState(patience_left=cfg.early_stopping_patience)
    if cfg.resume:
        state = load_checkpoint(out / CHECKPOINT, model, optimizer, scaler)
        log.info("resumed %s at epoch %d, step %d", out, state.epoch, state.step)
    train_model = RealLengthCLIP(model) if real_length else model
    ddp_model = data_parallel(train_model, env)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    metrics_log = MetricsLog(out / METRICS_FILE if env.is_main else None, append=bool(cfg.resume))
    if env.is_main:
        write_json(out / RUN_CONFIG, run.config)
        log.info(
            "training %s on %d pairs (%d images), %d epochs = %d steps, global batch %d, %s x%d",
            bundle.spec,
            len(train_set.pairs),
            len(train_set.images()),
            cfg.epochs,
            total_steps,
            cfg.batch_size,
            env.device,
            env.world_size,
        )

    def evaluate(epoch: int) -> dict[str, Any]:
        metrics = evaluate_bundle(
            bundle, eval_set, cfg.recall_k, workers=workers, progress=cfg.progress
        )
        record = {"type": "eval", "epoch": epoch, "step": state.step, **metrics}
        run.eval_metrics.append(record)
        metrics_log.write(record)
        return record

    if eval_set is not None and env.is_main and state.epoch == 0:
        log.info("zero-shot: %s", _fmt(evaluate(0), cfg))

    # --- train ------------------------------------------------------------------------------
    samples_seen, train_time = 0, 0.0
    stop = False
    for epoch in range(state.epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and env.is_main),
            dynamic_ncols=True,
        )
        tick = time.perf_counter()
        for batch in micro_batches(loader, cfg.grad_accum_steps, env.device):
            lr = lr_at(state.step, total_steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            amp = autocast_for(cfg.precision, env.device)
            loss = contrastive_backward(ddp_model, batch, loss_fn, scaler, amp)
            batch_samples = sum(len(images) for images, _ in batch) * env.world_size
            if cfg.grad_clip_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            state.step += 1
            now = time.perf_counter()
            samples_seen += batch_samples
            train_time += now - tick
            record = {
                "type": "train",
                "epoch": epoch + 1,
                "step": state.step,
                "loss": loss.item(),
                "lr": lr,
                "samples_per_s": batch_samples / max(now - tick, 1e-9),
                "logit_scale": model.logit_scale.exp().item(),
            }
            tick = now
            run.train_loss.append(record["loss"])
            metrics_log.write(record)
            bar.set_postfix(
                loss=f"{record['loss']:.4f}",
                lr=f"{lr:.2e}",
                samples_s=f"{samples_seen / max(train_time, 1e-9):.1f}",
            )
            bar.update()
            if state.step >= total_steps:
                break
        bar.close()

        # --- evaluate, keep the best, early-stop ---------------------------------------------
        state.epoch = epoch + 1
        last_epoch = state.epoch == cfg.epochs or state.step >= total_steps
        if env.is_main:
            if eval_set is not None and (state.epoch % cfg.eval_every == 0 or last_epoch):
                record = evaluate(state.epoch)
                log.info("epoch %d: %s", state.epoch, _fmt(record, cfg))
                if state.add_evaluation(record, cfg.monitor, cfg.early_stopping_patience):
                    save_towers(bundle, out, dtype=_dtype(cfg.save_dtype))
                elif state.out_of_patience:
                    stop = True
                    log.info("early stopping: %s did not improve", cfg.monitor)
            elif eval_set is None:
                save_towers(bundle, out, dtype=_dtype(cfg.save_dtype))
            save_checkpoint(out / CHECKPOINT, state, model, optimizer, scaler)
        stop = broadcast_flag(stop or last_epoch, env)
        if stop:
            break

    # --- finish: best weights, optional WiSE-FT, the artifact -------------------------------
    if env.is_main:
        if state.best is not None:
            load_towers_into(model, out)
        if initial_state is not None:
            _wise_ft(model, initial_state, cfg.wise_ft)
            save_towers(bundle, out, dtype=_dtype(cfg.save_dtype))
            if eval_set is not None:
                record = evaluate(-1)
                record["wise_ft"] = cfg.wise_ft
                log.info("WiSE-FT alpha=%s: %s", cfg.wise_ft, _fmt(record, cfg))
        run.steps = state.step
        run.samples_per_second = samples_seen / max(train_time, 1e-9)
        run.config.update(
            logit_scale=model.logit_scale.item(),
            logit_bias=_item_or_none(getattr(model, "logit_bias", None)),
            steps=state.step,
            best=state.best,
            samples_per_second=run.samples_per_second,
        )
        write_json(out / RUN_CONFIG, run.config)
        log.info("wrote %s and %s", run.text_tower, run.vision_tower)
    metrics_log.close()
    barrier(env)
    run.best = state.best
    return run


# --- helpers ---------------------------------------------------------------------------------


def _run_config(cfg: FitConfig, bundle: CLIPBundle, env: Dist) -> dict[str, Any]:
    return {
        "model": bundle.spec,
        "model_name": bundle.model_name,
        "pretrained": bundle.pretrained,
        "model_cfg": bundle.model_cfg,
        "preprocess_cfg": bundle.preprocess_cfg,
        "logit_scale": bundle.model.logit_scale.item(),
        "logit_bias": None,
        "world_size": env.world_size,
        "fit": dataclasses.asdict(cfg),
        "towers": {"text": "clip-text", "vision": "clip-vision"},
    }


def _fmt(record: dict[str, Any], cfg: FitConfig) -> str:
    keys = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in cfg.recall_k]
    return ", ".join(f"{k.replace('_retrieval_recall', '_R')}={record[k]:.3f}" for k in keys)


def _item_or_none(t: torch.Tensor | None) -> float | None:
    return None if t is None else t.item()


def _dtype(name: str) -> torch.dtype:
    return torch.float16 if name == "float16" else torch.float32


def _wise_ft(model: torch.nn.Module, initial_state: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT: theta = (1 - alpha) * theta_start + alpha * theta_finetuned."""
    state = model.state_dict()
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = (1 - alpha) * initial_state[key].to(value.device) + alpha * value
    model.load_state_dict(state)
