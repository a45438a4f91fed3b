"""`age lopo DATASET`: leave-one-person-out evaluation. (`age report RUN_DIR` merges and shows a run.)

The old `age lopo report RUN_DIR` still works this release: extra arguments reach the command (CONTEXT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import (
    DeviceOpt,
    EpochsOpt,
    JsonOpt,
    PretrainedOpt,
    SetOpt,
    ShardOpt,
    check_int,
    deprecated,
    err_console,
    note_deprecated,
    note_project_name,
    option,
)
from agecli.cli.report import show_lopo_run, show_lopo_summary
from agecli.config import parse_overrides
from agecli.errors import AgeCliError
from agecli.report.progress import Reporter, markup_text, progress_bar

RUNS = Path("runs/lopo")
CONTEXT = {"allow_extra_args": True}  # ctx.args: RUN_DIR of the old `age lopo report RUN_DIR`


class RichFoldReporter(Reporter):
    """agecli.training.lopo.FoldReporter's events on one live display: a bar over folds (with ETA) and one over
    the batches of the running epoch. (Not a subclass, so `age --help` does not import torch.)"""

    def __init__(self, console=err_console):
        self.bar = progress_bar(console)
        self.bar.speed_estimate_period = 3600.0  # folds take minutes; rich's 30 s window would show no ETA
        self.folds_task = self.epoch_task = None
        self.subject, self.index, self.epochs = "", 0, 1

    def start_run(self, folds, done):
        err_console.print(f"{folds} folds in this run" + (f", {done} already done (skipped)" if done else ""))
        if folds > done:
            self.bar.start()
            self.folds_task = self.bar.add_task("folds", total=folds - done, info="")

    def start_fold(self, subject, index, total):
        self.subject, self.index = subject, index
        self.bar.update(self.folds_task, completed=index, info=f"fold {subject}")

    def start_epoch(self, epoch, epochs, batches):
        self.epochs = epochs
        description = f"fold {self.subject} epoch {epoch}/{epochs}"
        if self.epoch_task is None:
            self.epoch_task = self.bar.add_task(description, total=batches, info="")
        self.bar.update(self.epoch_task, description=description, total=batches, completed=0)

    def batch(self, done, total, loss):
        self.bar.update(self.epoch_task, completed=done, info=f"loss {loss:.3f}")

    def end_epoch(self, row, improved):
        # fractional fold progress keeps the ETA moving within a fold
        self.bar.update(self.folds_task, completed=self.index + row["epoch"] / self.epochs)
        self.bar.update(self.epoch_task, info=f"loss {row['train_loss']:.3f} val MAE {row['val_mae']:.2f}")

    def end_fold(self, fold):
        self.bar.update(self.folds_task, completed=self.index + 1)
        m = fold["metrics"]
        self.bar.console.print(f"fold {fold['subject']}: {m['n']} images  MAE {m['mae']:.2f}  CA(3) {m['ca3']:.3f}  "
                               f"CA(5) {m['ca5']:.3f}  ({fold['seconds']:.0f} s)", markup=False)

    def close(self):
        self.bar.stop()


def _data_label(prepared: Path) -> str:
    return prepared.resolve().name


def _preset_label(preset: str) -> str:
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset.replace("/", "-")


def _find_prepared(target: str) -> Path:
    from agecli.data.manifest import resolve_prepared  # imports pandas

    try:
        return resolve_prepared(target)
    except AgeCliError:
        if Path(target).exists():
            raise
        raise AgeCliError(f"no prepared dataset '{target}' (looked for prepared/{target}/manifest.csv); "
                          f"add --root DIR to prepare it first: age lopo {target} --root DIR") from None


def lopo(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(
        metavar="DATASET", help="Prepared dataset: a name under prepared/, its folder or its manifest.csv.")],
    root: Annotated[Optional[Path], option("--root")] = None,
    preset: Annotated[Optional[str], option("--preset", default="ssrnet/paper")] = None,
    subjects: Annotated[str, typer.Option("--subjects", help="Folds to run: all, 1,5,9 or 1-10 (numbers match ids like 001).")] = "all",
    shard: ShardOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    device: DeviceOpt = None,
    pretrained: PretrainedOpt = None,
    out: Annotated[Optional[Path], option("--out", default="runs/lopo/DATASET-PRESET")] = None,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="Keep each fold's best.pt/last.pt under folds/SUBJECT/.")] = False,
    json_path: JsonOpt = None,
    name: Annotated[Optional[str], deprecated("--name", "--out runs/lopo/NAME")] = None,
    project: Annotated[Optional[Path], deprecated("--project", "--out PROJECT/NAME")] = None,
) -> None:
    """Leave-one-person-out: for each subject, train on all the others and test on that subject.

    Reports MAE over all test images, the mean of per-subject MAEs, CA(3) and CA(5). Every finished fold is
    saved at once into the run folder (--out); rerunning the same command resumes, and `--shard I/N` jobs
    write into one run folder that `age report RUN_DIR` merges. The default preset, ssrnet/paper, trains
    from scratch (fast, offline); mvloss/paper is the mean-variance paper's protocol and needs ImageNet
    weights (--pretrained PATH, or none offline). FG-NET as in the mean-variance paper:
    age lopo fgnet --root FGNET --preset mvloss/paper --subjects all
    """
    from agecli.training import (
        lopo as lib,  # imports torch: only for this command, not for `age --help`
    )

    if target == "report":
        _deprecated_report(ctx.args, project or RUNS, json_path)
        return
    if ctx.args:
        raise AgeCliError(f"unexpected argument '{ctx.args[0]}': age lopo DATASET [options]")
    if name is not None or project is not None:
        note_project_name(name, project, out)
    check_int("--epochs", epochs, 1)
    overrides = parse_overrides(set_ or [])
    shortcuts = {"train.epochs": epochs, "train.device": device, "model.pretrained": pretrained}
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    from agecli.files.shards import parse_shard

    shard_spec = parse_shard(shard)
    cfg = lib.lopo_config(preset, overrides)
    prepared = _prepared(target, root, cfg.data.cache_size)
    cfg.data.manifest = str(prepared)
    lib.parse_subjects(subjects, lib.load_subject_data(prepared)[1]["subject"])  # bad input fails before any output
    folder = out or (project or RUNS) / (name or f"{_data_label(prepared)}-{_preset_label(cfg.preset)}")
    shard_text = f", shard {shard_spec[0]}/{shard_spec[1]}" if shard_spec else ""
    err_console.print(f"LOPO [bold]{cfg.model.name}[/] ({markup_text(cfg.preset)}, {cfg.train.epochs} epochs per fold) on "
                      f"[bold]{markup_text(prepared)}[/], subjects {markup_text(subjects)}{shard_text} -> {markup_text(folder)}")
    reporter = RichFoldReporter()
    try:
        summary = lib.run_lopo(cfg, folder, subjects, shard_spec, reporter, keep_checkpoints)
    finally:
        reporter.close()
    show_lopo_summary(summary, folder, json_path)


def _deprecated_report(args: list[str], project: Path, json_path: Optional[Path]) -> None:
    """The old `age lopo report RUN_DIR` (RUN_DIR or its NAME under runs/lopo): the same code as `age report`."""
    note_deprecated("age lopo report", "age report RUN_DIR")
    if len(args) != 1:
        raise AgeCliError("usage: age lopo report RUN_DIR (deprecated: use age report RUN_DIR)")
    run_dir = Path(args[0])
    folder = run_dir if run_dir.is_dir() or run_dir.parent != Path(".") else project / run_dir
    show_lopo_run(folder, json_path)


def _prepared(target: str, root: Optional[Path], cache_size: int) -> Path:
    """The prepared dataset to run on: prepared first from --root when given (a no-op when done)."""
    from agecli.training import lopo as lib

    if root is None:
        return _find_prepared(target)
    with progress_bar(err_console, transient=True) as bar:
        task = bar.add_task(f"prepare {target}", total=None, info="")
        return lib.ensure_prepared(target, root, cache_size,
                                   on_progress=lambda done, total: bar.update(task, completed=done, total=total))
