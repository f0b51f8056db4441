"""The fine-tuning loop: CLIP contrastive loss on image-caption pairs, both towers (or one).

`fit` reads top to bottom: set up (distributed, model, data, optimiser, the state to start
from), then for each epoch train, evaluate and keep the best, checkpoint; then finish (best
weights, optional WiSE-FT, the two towers). Works on CPU and GPU, and under
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

from finetune.accumulation import MicroBatch, autocast_for, contrastive_backward, micro_batches
from finetune.artifact import RUN_CONFIG, load_model, load_towers_into, save_towers
from finetune.atomic import write_json
from finetune.checkpoint import CHECKPOINT, TrainState, load_checkpoint, save_checkpoint
from finetune.dataset import PairDataset
from finetune.distributed import Dist, barrier, broadcast_flag, data_parallel, setup_distributed
from finetune.evaluation import DEFAULT_RECALL_K, default_workers, evaluate_bundle
from finetune.loss import LOSSES, create_loss
from finetune.models import CLIPBundle
from finetune.text_length import RealLengthCLIP, supports_trimming, trimmed_collate
from imagepairs.pairs import FORMATS, PairSet, detect_format, load_pairs

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
    # data-format options, passed to imagepairs.pairs.load_pairs for train and eval data
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


@dataclass
class _Throughput:
    """Training samples and seconds in this process's session (a resumed run starts again)."""

    samples: int = 0
    seconds: float = 0.0

    def add(self, samples: int, seconds: float) -> None:
        self.samples += samples
        self.seconds += seconds

    @property
    def per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


@dataclass
class _Training:
    """What the set-up builds once and every phase of `fit` uses."""

    cfg: FitConfig
    env: Dist
    bundle: CLIPBundle
    # what a step calls: the model, run at real text length and in DDP where those apply
    step_model: torch.nn.Module
    sampler: DistributedSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    eval_set: PairSet | None
    workers: int
    run: Run
    metrics_log: MetricsLog
    start_weights: dict[str, torch.Tensor] | None  # kept for WiSE-FT
    throughput: _Throughput = field(default_factory=_Throughput)

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    @property
    def out(self) -> Path:
        return self.run.output

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.loader) / self.cfg.grad_accum_steps)

    @property
    def total_steps(self) -> int:
        return min(self.cfg.epochs * self.steps_per_epoch, self.cfg.max_steps or math.inf)


def fit(config: FitConfig | None = None, **kwargs: Any) -> Run:
    """Fine-tune a CLIP on image-caption pairs and write its two towers to `output`.

    Pass a `FitConfig` or its fields as keyword arguments, e.g.
    `fit(model="ViT-B-32#openai", train_data="pairs.csv", eval_data="test.csv", epochs=5)`.
    """
    cfg = dataclasses.replace(config, **kwargs) if config else FitConfig(**kwargs)
    cfg.recall_k = tuple(cfg.recall_k)
    cfg.validate()
    env = setup_distributed(cfg.device)
    _check_global_batch(cfg, env)
    seed_everything(cfg.seed)
    t, state = _set_up(cfg, env)
    _evaluate_zero_shot(t, state)
    for epoch in range(state.epoch, cfg.epochs):
        _train_epoch(t, state, epoch)
        state.epoch = epoch + 1
        last_epoch = state.epoch == cfg.epochs or state.step >= t.total_steps
        stop = _evaluate_and_select(t, state, last_epoch)
        _checkpoint(t, state)
        if broadcast_flag(stop or last_epoch, env):
            break
    _finish(t, state)
    return t.run


# --- set up ------------------------------------------------------------------------------------


def _check_global_batch(cfg: FitConfig, env: Dist) -> None:
    if cfg.batch_size % env.world_size:
        raise ValueError(
            f"batch_size {cfg.batch_size} is the global batch and must divide evenly over "
            f"{env.world_size} processes"
        )


def _set_up(cfg: FitConfig, env: Dist) -> tuple[_Training, TrainState]:
    """Model, data, optimiser and run folder, and the state to start from: a fresh one, or the
    checkpoint's when resuming."""
    bundle = load_model(cfg.model, device=env.device)
    start_weights = copy.deepcopy(bundle.model.state_dict()) if cfg.wise_ft is not None else None
    lock_towers(bundle.model, cfg)
    train_set = load_data(cfg, cfg.train_data, cfg.split)
    eval_set = load_data(cfg, cfg.eval_data, _eval_split(cfg)) if cfg.eval_data else None
    workers = default_workers() if cfg.workers is None else cfg.workers
    sampler, loader = _train_loader(cfg, env, bundle, train_set, workers)
    optimizer = make_optimizer(bundle.model, cfg)
    scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.precision == "amp")
    run = Run(output=Path(cfg.resume or cfg.output), config=_run_config(cfg, bundle, env))
    state = _start_state(cfg, run.output, bundle.model, optimizer, scaler)
    t = _Training(
        cfg=cfg,
        env=env,
        bundle=bundle,
        step_model=_step_model(bundle, env),
        sampler=sampler,
        loader=loader,
        optimizer=optimizer,
        scaler=scaler,
        loss_fn=create_loss(cfg.loss),
        eval_set=eval_set,
        workers=workers,
        run=run,
        metrics_log=_open_run_folder(run, env, append=bool(cfg.resume)),
        start_weights=start_weights,
    )
    _log_start(t, train_set)
    return t, state


def _train_loader(
    cfg: FitConfig, env: Dist, bundle: CLIPBundle, train_set: PairSet, workers: int
) -> tuple[DistributedSampler, DataLoader]:
    dataset = PairDataset(train_set.pairs, bundle.preprocess(train=cfg.augment), bundle.tokenizer)
    # One sampler for 1 or N processes: the union of the N per-rank batches of step k is the
    # single-process batch of step k, so results don't depend on the number of processes.
    sampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size // env.world_size // cfg.grad_accum_steps or 1,
        sampler=sampler,
        collate_fn=trimmed_collate if supports_trimming(bundle.model_cfg) else None,
        num_workers=workers,
        pin_memory=env.device.type == "cuda",
        persistent_workers=workers > 0,
    )
    return sampler, loader


def _step_model(bundle: CLIPBundle, env: Dist) -> torch.nn.Module:
    # Causal mask + argmax pooling: each text batch is cut to its longest caption, and the model
    # forward runs the text tower at that length (same loss and gradients, less work).
    real_length = supports_trimming(bundle.model_cfg)
    return data_parallel(RealLengthCLIP(bundle.model) if real_length else bundle.model, env)


def _start_state(
    cfg: FitConfig,
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> TrainState:
    if not cfg.resume:
        return TrainState(patience_left=cfg.early_stopping_patience)
    state = load_checkpoint(out / CHECKPOINT, model, optimizer, scaler)
    log.info("resumed %s at epoch %d, step %d", out, state.epoch, state.step)
    return state


def _open_run_folder(run: Run, env: Dist, append: bool) -> MetricsLog:
    """Main process: create the run folder, write its config and open its metrics log."""
    if not env.is_main:
        return MetricsLog(None)
    run.output.mkdir(parents=True, exist_ok=True)
    write_json(run.output / RUN_CONFIG, run.config)
    return MetricsLog(run.output / METRICS_FILE, append=append)


def _log_start(t: _Training, train_set: PairSet) -> None:
    if not t.env.is_main:
        return
    log.info(
        "training %s on %d pairs (%d images), %d epochs = %d steps, global batch %d, %s x%d",
        t.bundle.spec,
        len(train_set.pairs),
        len(train_set.images()),
        t.cfg.epochs,
        t.total_steps,
        t.cfg.batch_size,
        t.env.device,
        t.env.world_size,
    )


# --- train -------------------------------------------------------------------------------------


def _train_epoch(t: _Training, state: TrainState, epoch: int) -> None:
    """One pass over the training data, or up to the last step: one record per optimiser step."""
    cfg = t.cfg
    t.sampler.set_epoch(epoch)
    t.model.train()
    bar = tqdm(
        total=t.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (cfg.progress and t.env.is_main),
        dynamic_ncols=True,
    )
    tick = time.perf_counter()
    for batch in micro_batches(t.loader, cfg.grad_accum_steps, t.env.device):
        lr = lr_at(state.step, t.total_steps, cfg)
        loss = _optimizer_step(t, batch, lr)
        state.step += 1
        now = time.perf_counter()
        samples = sum(len(images) for images, _ in batch) * t.env.world_size
        t.throughput.add(samples, now - tick)
        record = {
            "type": "train",
            "epoch": epoch + 1,
            "step": state.step,
            "loss": loss.item(),
            "lr": lr,
            "samples_per_s": samples / max(now - tick, 1e-9),
            "logit_scale": t.model.logit_scale.exp().item(),
        }
        tick = now
        _log_step(t, record, bar)
        if state.step >= t.total_steps:
            break
    bar.close()


def _optimizer_step(t: _Training, batch: list[MicroBatch], lr: float) -> torch.Tensor:
    """Backward over the whole batch, then one clipped, scaled optimiser step; returns the loss."""
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    amp = autocast_for(t.cfg.precision, t.env.device)
    loss = contrastive_backward(t.step_model, batch, t.loss_fn, t.scaler, amp)
    if t.cfg.grad_clip_norm:
        t.scaler.unscale_(t.optimizer)
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip_norm)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        t.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss


def _log_step(t: _Training, record: dict[str, Any], bar: tqdm) -> None:
    t.run.train_loss.append(record["loss"])
    t.metrics_log.write(record)
    bar.set_postfix(
        loss=f"{record['loss']:.4f}",
        lr=f"{record['lr']:.2e}",
        samples_s=f"{t.throughput.per_second:.1f}",
    )
    bar.update()


# --- evaluate, keep the best, checkpoint --------------------------------------------------------


def _evaluate(t: _Training, state: TrainState, epoch: int) -> dict[str, Any]:
    """Recall@k on the evaluation data, recorded; `epoch` 0 is zero-shot, -1 after WiSE-FT."""
    metrics = evaluate_bundle(
        t.bundle, t.eval_set, t.cfg.recall_k, workers=t.workers, progress=t.cfg.progress
    )
    record = {"type": "eval", "epoch": epoch, "step": state.step, **metrics}
    t.run.eval_metrics.append(record)
    t.metrics_log.write(record)
    return record


def _evaluate_zero_shot(t: _Training, state: TrainState) -> None:
    if t.eval_set is not None and t.env.is_main and state.epoch == 0:
        log.info("zero-shot: %s", _fmt(_evaluate(t, state, 0), t.cfg))


def _evaluate_and_select(t: _Training, state: TrainState, last_epoch: bool) -> bool:
    """After an epoch, on the main process: evaluate when due, and save the towers when they are
    the best so far (without evaluation data, always). True to stop early."""
    cfg = t.cfg
    if not t.env.is_main:
        return False
    if t.eval_set is None:
        _save_towers(t)
        return False
    if state.epoch % cfg.eval_every and not last_epoch:
        return False
    record = _evaluate(t, state, state.epoch)
    log.info("epoch %d: %s", state.epoch, _fmt(record, cfg))
    if state.add_evaluation(record, cfg.monitor, cfg.early_stopping_patience):
        _save_towers(t)
        return False
    if state.out_of_patience:
        log.info("early stopping: %s did not improve", cfg.monitor)
    return state.out_of_patience


def _checkpoint(t: _Training, state: TrainState) -> None:
    if t.env.is_main:
        save_checkpoint(t.out / CHECKPOINT, state, t.model, t.optimizer, t.scaler)


def _save_towers(t: _Training) -> None:
    save_towers(t.bundle, t.out, dtype=_dtype(t.cfg.save_dtype))


# --- finish ------------------------------------------------------------------------------------


def _finish(t: _Training, state: TrainState) -> None:
    """Main process: the best weights, optionally WiSE-FT'd, as the artifact, and the run's
    config with what was measured. Every process then waits for it."""
    t.run.best = state.best
    if t.env.is_main:
        if state.best is not None:
            load_towers_into(t.model, t.out)
        if t.start_weights is not None:
            _apply_wise_ft(t, state)
        _write_final_config(t, state)
    t.metrics_log.close()
    barrier(t.env)


def _apply_wise_ft(t: _Training, state: TrainState) -> None:
    _wise_ft(t.model, t.start_weights, t.cfg.wise_ft)
    _save_towers(t)
    if t.eval_set is not None:
        record = _evaluate(t, state, -1)
        record["wise_ft"] = t.cfg.wise_ft
        log.info("WiSE-FT alpha=%s: %s", t.cfg.wise_ft, _fmt(record, t.cfg))


def _write_final_config(t: _Training, state: TrainState) -> None:
    run = t.run
    run.steps = state.step
    run.samples_per_second = t.throughput.per_second
    run.config.update(
        logit_scale=t.model.logit_scale.item(),
        logit_bias=_item_or_none(getattr(t.model, "logit_bias", None)),
        steps=state.step,
        best=state.best,
        samples_per_second=run.samples_per_second,
    )
    write_json(t.out / RUN_CONFIG, run.config)
    log.info("wrote %s and %s", run.text_tower, run.vision_tower)


# --- helpers -----------------------------------------------------------------------------------


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
