"""`age lopo DATASET` (leave-one-person-out evaluation) and `age lopo report RUN_DIR`.

One command rather than a group: its first argument is either a dataset or the word `report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import (
    METRIC_COLUMNS,
    DeviceOpt,
    JsonOpt,
    SetOpt,
    check_int,
    emit_json,
    err_console,
    metrics_table,
    out_console,
)
from agecli.config import parse_overrides
from agecli.errors import AgeCliError
from agecli.report.progress import Reporter, progress_bar

RUNS = Path("runs/lopo")


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


def _show(summary: dict, run_dir: Path, json_path: Optional[Path]) -> None:
    title = f"LOPO · {summary['model']} · {summary['preset']} · {summary['data']}"
    rows = [dict(r, subject=str(r["subject"])) for r in summary["subjects"]]
    out_console.print(metrics_table(f"{title}: per subject", rows, [("subject", "subject", "")] + METRIC_COLUMNS))
    o = summary["overall"]
    overall = [{"set": "all test images", **o},
               {"set": f"mean of per-subject MAEs ({summary['folds_done']} subjects)", "n": "", "mae": summary["mean_subject_mae"],
                "ca3": "", "ca5": ""}]
    out_console.print(metrics_table(title, overall, [("set", "", "")] + METRIC_COLUMNS))
    err_console.print(f"held-out subjects predicted with the {summary['test_weights']} epoch's weights; "
                      f"validation: {summary['val_fraction']:g} of training {summary['val_mode']} "
                      f"{'subjects' if summary['val_mode'] == 'subject' else 'images'}")
    if not summary["complete"]:
        missing = summary["missing"]
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        err_console.print(f"[yellow]incomplete: {summary['folds_done']} of {summary['folds_total']} folds done; "
                          f"missing {listed}[/] (rerun the same command, or the remaining shards)")
    emit_json(summary, json_path)
    err_console.print(f"Results saved to [bold]{run_dir}[/] (report.html, report.json, subjects.csv, predictions.csv, error_by_age.png)")


def lopo(
    target: Annotated[str, typer.Argument(
        metavar="DATASET|report",
        help="Prepared dataset (name under prepared/, its folder or manifest.csv), or 'report' to merge a run.")],
    run_dir: Annotated[Optional[Path], typer.Argument(
        metavar="RUN_DIR", help="With 'report': the run directory (runs/lopo/NAME) or its NAME.")] = None,
    root: Annotated[Optional[Path], typer.Option(
        "--root", help="The dataset as downloaded: prepare it into prepared/DATASET first (resumable, no-op when done).")] = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help="ssrnet/paper (default: from scratch, fast, offline) or mvloss/paper (the mean-variance "
                         "paper's protocol; needs ImageNet weights: --pretrained PATH, or none offline).")] = None,
    subjects: Annotated[str, typer.Option("--subjects", help="Folds to run: all, 1,5,9 or 1-10 (numbers match ids like 001).")] = "all",
    shard: Annotated[Optional[str], typer.Option("--shard", help="Run only share I of N of the folds (1/4 ... 4/4), e.g. one per job of an array.")] = None,
    set_: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Shortcut for --set train.epochs=N (each fold).")] = None,
    device: DeviceOpt = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="imagenet | none | PATH (ResNets).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name; rerunning with the same name resumes. \\[default: DATASET-PRESET]")] = None,
    project: Annotated[Path, typer.Option("--project", help="Parent of LOPO run directories.")] = RUNS,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints", help="Keep each fold's best.pt/last.pt under folds/SUBJECT/.")] = False,
    json_path: JsonOpt = None,
) -> None:
    """Leave-one-person-out: for each subject, train on all the others and test on that subject.

    Reports MAE over all test images, the mean of per-subject MAEs, CA(3) and CA(5). Every finished fold is
    saved at once; rerunning the same command resumes, and `--shard I/N` jobs write into one run directory
    that `age lopo report RUN_DIR` merges. FG-NET as in the mean-variance paper:
    age lopo fgnet --root FGNET --preset mvloss/paper --subjects all
    """
    from agecli.training import (
        lopo as lib,  # imports torch: only for this command, not for `age --help`
    )

    if target == "report":
        _report(run_dir, project, json_path)
        return
    if run_dir is not None:
        raise AgeCliError(f"unexpected argument '{run_dir}': age lopo DATASET [options], or age lopo report RUN_DIR")
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
    folder = project / (name or f"{_data_label(prepared)}-{_preset_label(cfg.preset)}")
    shard_text = f", shard {shard_spec[0]}/{shard_spec[1]}" if shard_spec else ""
    err_console.print(f"LOPO [bold]{cfg.model.name}[/] ({cfg.preset}, {cfg.train.epochs} epochs per fold) on "
                      f"[bold]{prepared}[/], subjects {subjects}{shard_text} -> {folder}")
    reporter = RichFoldReporter()
    try:
        summary = lib.run_lopo(cfg, folder, subjects, shard_spec, reporter, keep_checkpoints)
    finally:
        reporter.close()
    _show(summary, folder, json_path)


def _report(run_dir: Optional[Path], project: Path, json_path: Optional[Path]) -> None:
    """`age lopo report RUN_DIR`: merge a run's folds (and shards) and show the result."""
    from agecli.training import lopo as lib

    if run_dir is None:
        raise AgeCliError("usage: age lopo report RUN_DIR (a folder under runs/lopo)")
    folder = run_dir if run_dir.is_dir() or run_dir.parent != Path(".") else project / run_dir
    _show(lib.report(folder), folder, json_path)


def _prepared(target: str, root: Optional[Path], cache_size: int) -> Path:
    """The prepared dataset to run on: prepared first from --root when given (a no-op when done)."""
    from agecli.training import lopo as lib

    if root is None:
        return _find_prepared(target)
    with progress_bar(err_console, transient=True) as bar:
        task = bar.add_task(f"prepare {target}", total=None, info="")
        return lib.ensure_prepared(target, root, cache_size,
                                   on_progress=lambda done, total: bar.update(task, completed=done, total=total))
