"""The training loop, in small named steps: train = the run's faces (datasets.py), then fit = set_up_training,
then per epoch run_epoch (train_one_epoch, the schedule, evaluate), Progress.record and save_epoch
(checkpoints, metrics.csv, curves), then the best epoch scored on each split and source (scoring.py);
resumed_progress picks a run up from last.pt.

Runs under `torchrun` too: each process trains on its share of every epoch (gloo on CPU, NCCL on CUDA),
gradients are averaged by DistributedDataParallel, BatchNorm statistics are computed over the global
batch (so N ranks x batch B train like one process with batch N*B), every rank validates on the whole
(small) validation set so all ranks agree on the best epoch, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from agecli.config import Config, config_from_dict, dump_yaml
from agecli.data.cache import Batches
from agecli.data.manifest import source_label
from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.files.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from agecli.files.locks import folder_lock
from agecli.modelio.builtin import resolve_model_path
from agecli.modelio.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from agecli.modelio.packaging import member_weights
from agecli.models import create_model
from agecli.models.base import AgeModel
from agecli.report import build_report_or_warn
from agecli.report.progress import NullReporter, Reporter
from agecli.system.device import select_device
from agecli.system.distributed import init_distributed, mean_across_ranks, sync_batchnorm
from agecli.system.ranks import is_main_process
from agecli.system.reproducibility import library_versions, seed_everything
from agecli.training.datasets import (
    crop_geometry,
    load_sources,
    source_counts,
    source_specs,
    split_sources,
    stack_sources,
    warn_about_sources,
)
from agecli.training.distill import Teacher
from agecli.training.losses import create_loss
from agecli.training.scoring import evaluate, score_splits

DISTRIBUTION_LOSSES = ("softmax", "mean_variance")


def preprocess_for(cfg: Config, model: torch.nn.Module, crop: dict | None = None) -> Preprocess:
    """The preprocessing a checkpoint carries, so predict and export never have to guess.

    `crop` is the geometry `prepare` used (margin, shift, detector). Datasets of ready-made face chips
    were not detected; for them predict uses the default detector's calibration (Preprocess's defaults),
    which reproduces chips.
    """
    return Preprocess(input_size=cfg.data.input_size, crop_size=cfg.data.cache_size, mean=cfg.data.mean,
                      std=cfg.data.std, channel_order=cfg.data.channel_order, age_min=model.age_min,
                      age_max=model.age_max,
                      **(crop or {}))


def build_model(cfg: Config, reporter: Reporter | None = None) -> AgeModel:
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    if cfg.loss.name in DISTRIBUTION_LOSSES and not model.is_distribution:
        raise AgeCliError(f"loss.name={cfg.loss.name} needs a distribution head; model '{cfg.model.name}' "
                          f"predicts a single age (try ssrnet_dist or resnet34)")
    if cfg.train.freeze_epochs > 0 and not model.can_freeze:
        raise AgeCliError(f"train.freeze_epochs={cfg.train.freeze_epochs}: model '{cfg.model.name}' has no head "
                          "that trains alone; set train.freeze_epochs=0")
    if cfg.model.pretrained not in ("", "none"):
        (reporter or NullReporter()).message(model.load_pretrained(cfg.model.pretrained))
    if cfg.train.init:
        load_init_weights(model, cfg)
    return model


def load_init_weights(model: AgeModel, cfg: Config) -> None:
    """train.init: a checkpoint, or a shipped model's name (default, lite0). A packaged ensemble (int8 weights,
    restored to float by load_checkpoint) gives the first member whose weights fit, same architecture first."""
    state = load_checkpoint(resolve_model_path(cfg.train.init))
    members = sorted(member_weights(state), key=lambda member: member[0] != cfg.model.name)  # stable sort
    problems = []
    for name, weights in members:
        problem = _load_problem(model, weights)
        if not problem:
            return
        problems.append(f"{name}: {problem}")
    raise AgeCliError(f"{cfg.train.init}: its weights do not fit {cfg.model.name} ({'; '.join(problems)[:300]})")


def _load_problem(model: torch.nn.Module, weights: dict) -> str:
    """'' when `weights` fill every tensor of `model` (and are loaded), else what does not fit."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes differ
        return " ".join(str(err).split())[:200]
    return f"missing {missing[:2]}, unexpected {unexpected[:2]}" if missing or unexpected else ""


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters()]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    s = cfg.sched
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(s.milestones), gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def train_one_epoch(model, batches: Batches, loss_fn, optimizer, ages, reporter: Reporter,
                    scaler=None, teacher: Teacher | None = None) -> float:
    model.train()
    total, count = 0.0, 0
    for i, (x, y, rows) in enumerate(batches.with_rows()):
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=scaler is not None):
            out = model(x)
            loss = loss_fn(out, y, ages)
            if teacher is not None:
                loss = teacher.loss(loss, out["logits"], x, rows)
        if not torch.isfinite(loss):
            raise AgeCliError(f"loss became {loss.item()} at batch {i}; lower optim.lr (SSR-Net diverges above 0.002)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
        reporter.batch(i + 1, len(batches), total / count)
    return total / max(count, 1)


def _better(metrics: dict, best: dict | None, select: str) -> bool:
    if best is None:
        return True
    if select == "mae":
        return metrics["mae"] < best["mae"]
    return (metrics[select], -metrics["mae"]) > (best[select], -best["mae"])


@dataclass
class FitResult:
    run_dir: Path | None
    best: dict
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None  # holds the best epoch's weights when fit returns


@dataclass
class Training:
    """What one training run works with, set up once by set_up_training."""
    cfg: Config
    device: torch.device
    rank: int
    world: int
    model: AgeModel  # the bare model: validated and saved
    net: torch.nn.Module  # what trains: the model, or DistributedDataParallel around it
    preprocess: Preprocess
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    batches: Batches
    teacher: Teacher | None = None
    scaler: torch.amp.GradScaler | None = None

    @property
    def ages(self) -> torch.Tensor | None:
        return self.model.ages


@dataclass
class Progress:
    """The epochs done so far (what last.pt's train_state holds), and the best epoch's weights in memory."""
    next_epoch: int = 1
    best: dict | None = None
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None

    def record(self, row: dict, metrics: dict, model: torch.nn.Module, select: str) -> bool:
        """Add an epoch's row; True when it is the best so far."""
        self.history.append(row)
        self.next_epoch = row["epoch"] + 1
        if not _better(metrics, self.best, select):
            return False
        self.best, self.best_epoch = metrics, row["epoch"]
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # in memory: cheap
        return True

    def train_state(self, t: Training) -> dict:
        """Everything --resume needs besides the weights (see agecli.modelio.checkpoint)."""
        return {"optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
                "epoch": self.next_epoch - 1, "best": self.best, "best_epoch": self.best_epoch,
                "history": self.history}


def fit(cfg: Config, crops: np.ndarray, train_df: pd.DataFrame, val_df: pd.DataFrame,
        run_dir: Path | None = None, reporter: Reporter | None = None, resume_state: dict | None = None,
        save_checkpoints: bool = True, crop: dict | None = None) -> FitResult:
    """Train cfg's model on cached crops; keep the epoch with the best validation metric."""
    reporter = reporter or NullReporter()
    t = set_up_training(cfg, crops, train_df, reporter, crop, resume_state)
    progress = resumed_progress(resume_state, run_dir) if resume_state is not None else Progress()
    eval_df = val_df if len(val_df) else train_df
    config_dict = cfg.to_dict()
    for epoch in range(progress.next_epoch, cfg.train.epochs + 1):
        row, metrics = run_epoch(t, epoch, crops, eval_df, reporter)
        improved = progress.record(row, metrics, t.model, cfg.train.select)
        if t.rank == 0 and run_dir is not None:
            save_epoch(run_dir, t, config_dict, metrics, improved, progress, save_checkpoints)
        reporter.end_epoch(row, improved)
    if progress.best_state is not None:
        t.model.load_state_dict(progress.best_state)
    return FitResult(run_dir, progress.best or {}, progress.best_epoch, progress.history, t.model)


def set_up_training(cfg: Config, crops: np.ndarray, train_df: pd.DataFrame, reporter: Reporter,
                    crop: dict | None = None, resume_state: dict | None = None) -> Training:
    """Device and process group, seeded model, optimizer and schedule (restored from resume_state), loss,
    teacher, mixed precision and the training batches."""
    device = select_device(cfg.train.device)
    rank, world = init_distributed(device)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, reporter)
    preprocess = preprocess_for(cfg, model, crop)
    model.to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer)
    if resume_state is not None:  # before DDP wraps the model
        model.load_state_dict(resume_state["state_dict"])
        optimizer.load_state_dict(resume_state["train_state"]["optimizer"])
        scheduler.load_state_dict(resume_state["train_state"]["scheduler"])
    model, net = _distribute(model, device, world)
    batches = Batches(crops, train_df["cache_row"].to_numpy(), train_df["age"].to_numpy(), cfg.train.batch_size,
                      preprocess=preprocess, augment=cfg.data.augment, shuffle=True, seed=cfg.train.seed,
                      rank=rank, world=world, device=device, channels_last=cfg.train.channels_last,
                      weights=train_df["sample_weight"].to_numpy() if "sample_weight" in train_df else None)
    t = Training(cfg, device, rank, world, model, net, preprocess, optimizer, scheduler,
                 create_loss(cfg.loss.name, cfg.loss.lambda_mean, cfg.loss.lambda_var), batches)
    if cfg.distill.teacher:
        t.teacher = Teacher(cfg.distill.teacher, preprocess, t.ages, cfg.distill.weight, cfg.distill.temperature,
                            device, taught_rows(cfg, train_df, len(crops)))
    t.scaler = torch.amp.GradScaler("cuda") if cfg.train.amp and device.type == "cuda" else None
    if cfg.train.amp and t.scaler is None:
        reporter.message(f"note: --amp (mixed precision) applies on CUDA only; training in float32 on {device.type}")
    return t


def taught_rows(cfg: Config, train_df: pd.DataFrame, cache_rows: int) -> np.ndarray | None:
    """With distill.sources, which cache rows the teacher teaches (True), from the sources it names; None: all."""
    if not cfg.distill.sources:
        return None
    names = {source_label(entry) for entry in cfg.distill.sources}
    known = list(train_df["source"].unique()) if "source" in train_df else []
    unknown = sorted(names - set(known))
    if unknown:
        raise AgeCliError(f"distill.sources: '{unknown[0]}' is not one of this run's data.sources ({', '.join(known)})")
    taught = np.zeros(cache_rows, dtype=bool)
    taught[train_df.loc[train_df["source"].isin(names), "cache_row"].to_numpy()] = True
    return taught


def _distribute(model: AgeModel, device: torch.device, world: int) -> tuple[AgeModel, torch.nn.Module]:
    """(model, what trains): under torchrun, global BatchNorm and DistributedDataParallel around the model."""
    if world <= 1:
        return model, model
    import warnings

    model = sync_batchnorm(model, device)
    # a 1x1 conv's weight gradient may carry other (equivalent) strides than DDP's bucket; harmless copy
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return model, torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def resumed_progress(resume_state: dict, run_dir: Path | None) -> Progress:
    """Where last.pt left off, with the best epoch's weights read back from best.pt."""
    ts = resume_state["train_state"]
    progress = Progress(ts["epoch"] + 1, ts["best"], ts["best_epoch"], ts["history"])
    if run_dir is not None and (run_dir / "best.pt").is_file():
        progress.best_state = load_checkpoint(run_dir / "best.pt")["state_dict"]
    return progress


def run_epoch(t: Training, epoch: int, crops: np.ndarray, eval_df: pd.DataFrame,
              reporter: Reporter) -> tuple[dict, dict]:
    """Train one epoch, step the schedule and validate: (the metrics.csv row, the validation metrics)."""
    cfg = t.cfg
    # dropout identical after a resume; each rank its own masks (rank 0 keeps the single-process seed)
    torch.manual_seed(cfg.train.seed * 1_000 + epoch + t.rank * 1_000_003)
    t.batches.set_epoch(epoch)
    if cfg.train.freeze_epochs:  # the mean-variance recipe's head-only first epochs
        t.model.freeze_backbone(epoch <= cfg.train.freeze_epochs)
    reporter.start_epoch(epoch, cfg.train.epochs, len(t.batches))
    t0 = time.time()
    train_loss = train_one_epoch(t.net, t.batches, t.loss_fn, t.optimizer, t.ages, reporter, t.scaler, t.teacher)
    if t.world > 1:
        train_loss = mean_across_ranks(train_loss, t.device)
    lr = t.optimizer.param_groups[0]["lr"]
    t.scheduler.step()
    metrics = evaluate(t.model, crops, eval_df, t.preprocess, t.device)
    row = {"epoch": epoch, "train_loss": train_loss, "val_mae": metrics["mae"], "val_ca3": metrics["ca3"],
           "val_ca5": metrics["ca5"], "lr": lr, "seconds": round(time.time() - t0, 2)}
    return row, metrics


def save_epoch(run_dir: Path, t: Training, config_dict: dict, metrics: dict, improved: bool, progress: Progress,
               save_checkpoints: bool = True) -> None:
    """best.pt when the epoch improved, last.pt (with what --resume needs), metrics.csv and curves.png."""
    from agecli.report.plots import plot_curves

    cfg = t.cfg
    common = dict(model=t.model, model_name=cfg.model.name, model_kwargs=cfg.model.kwargs, preprocess=t.preprocess,
                  config=config_dict, epoch=progress.next_epoch - 1, metrics=metrics)
    if save_checkpoints:
        if improved:
            save_checkpoint(run_dir / "best.pt", **common)
        save_checkpoint(run_dir / "last.pt", **common, train_state=progress.train_state(t))
    write_csv_atomic(run_dir / "metrics.csv", progress.history, list(progress.history[0]))
    plot_curves(progress.history, run_dir / "curves.png")


def train(cfg: Config, run_dir: Path, reporter: Reporter | None = None, resume: bool = False) -> FitResult:
    """`age train`: resolve data, write config and environment beside the outputs, fit, test the best epoch."""
    with folder_lock(run_dir, "--out") if is_main_process() else contextlib.nullcontext():  # one run per folder
        return _train(cfg, run_dir, reporter, resume)


def _train(cfg: Config, run_dir: Path, reporter: Reporter | None = None, resume: bool = False) -> FitResult:
    sources = load_sources(source_specs(cfg.to_dict()["data"]))
    crops, df = stack_sources(sources, cfg.data.cache_size)
    train_df, val_df = split_sources(df, cfg)
    if is_main_process():
        warn_about_sources(sources, df, cfg, reporter or NullReporter())
    prepared = sources[0].prepared
    resume_state = None
    last = run_dir / "last.pt"
    if resume and last.is_file():  # without it the run was killed in its first epoch: it starts again cleanly
        resume_state = load_checkpoint(last)
        if "train_state" not in resume_state:
            raise AgeCliError(f"{last}: holds no training state to resume from")
    if is_main_process():
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        write_json_atomic(run_dir / "env.json", {"seed": cfg.train.seed, "versions": library_versions(),
                                                 "data": str(prepared.resolve()), "train_rows": len(train_df),
                                                 "val_rows": len(val_df),
                                                 "sources": source_counts(sources, train_df, val_df, cfg)})
    result = fit(cfg, crops, train_df, val_df, run_dir, reporter, resume_state, crop=crop_geometry(prepared))
    test_df = df[df["split"] == cfg.data.test_split] if cfg.data.test_split else df.iloc[:0]
    best_model = result.model
    if (run_dir / "best.pt").is_file():
        best_model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))
    scores = score_splits(best_model, crops, {"val": val_df if len(val_df) else train_df, "test": test_df},
                          preprocess_for(cfg, best_model))  # size only
    summary = {"best_epoch": result.best_epoch, "val": {**scores.get("val", {}).get("all", {}), **result.best}}
    if "test" in scores:
        summary["test"] = scores["test"]["all"]
    summary["sources"] = {s.name: {split: score["sources"][s.name] for split, score in scores.items()
                                   if s.name in score["sources"]} for s in sources}
    if is_main_process():
        write_json_atomic(run_dir / "results.json", summary)
        build_report_or_warn(run_dir)
    return result


def resume_config(run_dir: Path) -> Config:
    """The configuration of a run to resume: from last.pt, or from config.yaml when no epoch finished."""
    if (run_dir / "last.pt").is_file():
        return config_from_dict(load_checkpoint(run_dir / "last.pt")["config"])
    if (run_dir / "config.yaml").is_file():
        import yaml

        return config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    what = "no such folder" if not run_dir.is_dir() else "not a training run (no last.pt or config.yaml)"
    raise AgeCliError(f"{run_dir}: {what}")

