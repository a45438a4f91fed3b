"""`age train MODEL`: one training run, everything it writes in one run folder."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import (
    METRIC_COLUMNS,
    SPREAD_NOTE,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    PresetOpt,
    PretrainedOpt,
    SetOpt,
    check_int,
    deprecated,
    err_console,
    metric_columns,
    metrics_table,
    note_deprecated,
    note_project_name,
    option,
    out_console,
)
from agecli.config import parse_overrides
from agecli.errors import AgeCliError
from agecli.files.atomic import discard_on_failure
from agecli.files.run_dirs import new_run_dir
from agecli.report.progress import RichReporter, markup_text
from agecli.system.ranks import is_main_process
from agecli.system.reproducibility import SEED_MAX
from agecli.training.recipes import config_for_model

# Library modules that import torch, pandas or OpenCV are imported inside the commands that use them, so
# that `age --help` and the light commands start in a fraction of a second.

RUNS = Path("runs/train")


def train(
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model or preset family: ssrnet, mvloss, resnet34, ssrnet_dist ... (not needed with --resume)", show_default=False)] = None,
    preset: PresetOpt = None,
    data: DataOpt = None,
    set_: SetOpt = None,
    epochs: EpochsOpt = None,
    batch: Annotated[Optional[int], option("--batch", default="the preset's")] = None,
    seed: Annotated[Optional[int], option("--seed", default="the preset's")] = None,
    device: DeviceOpt = None,
    pretrained: PretrainedOpt = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from these weights: a checkpoint, a packaged model file or a shipped model's name (default, ensemble, lite0); an ensemble gives its first member that fits.")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option("--teacher", help="Distil from this checkpoint or shipped model (one model or an ensemble; repeat for several, averaged): the student also learns its age distributions (distill.weight, distill.temperature).")] = None,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision on CUDA.")] = False,
    out: Annotated[Optional[Path], option("--out", default="runs/train/MODEL-PRESET, numbered if taken")] = None,
    resume: Annotated[bool, option("--resume")] = False,
    name: Annotated[Optional[str], deprecated("--name", "--out runs/train/NAME")] = None,
    project: Annotated[Optional[Path], deprecated("--project", "--out PROJECT/NAME")] = None,
) -> None:
    """Train a model from a preset; everything the run produces goes into one run folder (--out).

    The run folder gets report.html, best.pt, last.pt, metrics.csv, curves.png, config.yaml and results.json.

    An interrupted run continues from its last completed epoch with:
    age train --resume --out RUN_DIR
    """
    from agecli.data.manifest import resolve_prepared, sources_text
    from agecli.training.datasets import source_specs
    from agecli.training.engine import train as run_train  # imports torch: only for this command

    if name is not None or project is not None:
        note_project_name(name, project, out)
    if resume:
        given = {"--preset": preset, "--data": data, "--set": set_, "--epochs": epochs, "--batch": batch,
                 "--seed": seed, "--pretrained": pretrained, "--init": init, "--teacher": teacher,
                 "--amp": amp or None, "--name": name, "--project": project}
        cfg, run_dir = _resumed_run(out, model, device, given)
        fresh_dir = False
    else:
        shortcuts = {"data.manifest": data[0] if data and len(data) == 1 else None,
                     "data.sources": data if data and len(data) > 1 else None,
                     "train.epochs": epochs, "train.batch_size": batch, "train.seed": seed,
                     "train.device": device, "model.pretrained": pretrained,
                     "train.init": str(init) if init else None, "train.amp": amp or None,
                     "distill.teacher": ",".join(map(str, teacher)) if teacher else None}
        cfg, label = _new_config(model, preset, set_, shortcuts)
    specs = source_specs(cfg.to_dict()["data"])
    for data_name, _ in specs:  # a dataset not yet prepared is the error, before any folder or start line
        resolve_prepared(data_name)
    if not resume:
        run_dir, fresh_dir = _new_run_folder(out, project or RUNS, name or label)
    main = is_main_process()  # under torchrun only rank 0 prints
    if main:
        err_console.print(f"training [bold]{cfg.model.name}[/] ({markup_text(cfg.preset)}) on [bold]{markup_text(sources_text(specs))}[/] "
                          f"-> {markup_text(run_dir)}")
    # a new run that fails before its first epoch leaves no folder behind
    with discard_on_failure(run_dir, keep_if="last.pt") if fresh_dir else contextlib.nullcontext():
        run_train(cfg, run_dir, RichReporter(err_console) if main else None, resume=resume)
    if main:
        _show_training(cfg, run_dir)


def legacy_resume_argv(args: list[str]) -> list[str]:
    """`age train --resume RUN_DIR` (the old form: --resume took the run folder) as `--resume --out RUN_DIR`,
    with a deprecation note. Applied before parsing, since --resume is now a switch."""
    if not args or args[0] != "train" or any(a == "--out" or a.startswith("--out=") for a in args):
        return args
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--resume="):
            folder = arg.split("=", 1)[1]
            note_deprecated(f"--resume {folder}", f"--resume --out {folder}")
            return [*args[:i], "--resume", "--out", folder, *args[i + 1:]]
        if arg == "--resume" and i + 1 < len(args) and not args[i + 1].startswith("-"):
            folder = args[i + 1]
            note_deprecated(f"--resume {folder}", f"--resume --out {folder}")
            return [*args[:i + 1], "--out", *args[i + 1:]]
    return args


def _resumed_run(out: Path | None, model: str | None, device: str | None, given: dict):
    """(config, run folder) of the interrupted run in --out (its folder, or its last.pt)."""
    from agecli.training.engine import resume_config

    if out is None:
        raise AgeCliError("--resume: name the run folder to continue with --out RUN_DIR")
    run_dir = out.parent if out.suffix == ".pt" else out
    cfg = resume_config(run_dir)
    check_resume_options(run_dir, cfg, model, given)
    if device is not None:  # where it runs does not change the recipe
        cfg.train.device = device
    err_console.print(f"resuming [bold]{markup_text(run_dir)}[/]")
    return cfg, run_dir


def _new_config(model: str | None, preset: str | None, set_: list[str] | None, shortcuts: dict):
    """(config, default run name) for a new training run."""
    if model is None:
        raise AgeCliError("missing MODEL: age train MODEL --preset NAME (e.g. age train ssrnet --preset paper), "
                          "or age train --resume --out RUN_DIR")
    for option_name, key, low in (("--epochs", "train.epochs", 1), ("--batch", "train.batch_size", 1),
                                  ("--seed", "train.seed", 0)):
        check_int(option_name, shortcuts[key], low, SEED_MAX if option_name == "--seed" else None)
    overrides = parse_overrides(set_ or [])
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    cfg = config_for_model(model, preset, overrides)
    label = f"{model}-{Path(cfg.preset).stem if cfg.preset.endswith('.yaml') else cfg.preset.split('/')[-1]}"
    return cfg, label


def _new_run_folder(out: Path | None, project: Path, label: str) -> tuple[Path, bool]:
    """(run folder, whether this call created it): --out as given, else a fresh numbered one under project."""
    if out is None:
        return new_run_dir(project, label)
    if out.exists() and not out.is_dir():
        raise AgeCliError(f"--out {out}: exists and is not a folder; choose a folder")
    # every torchrun rank names the same folder; only rank 0 writes into it, so only it checks it is empty
    if out.is_dir() and is_main_process() and any(out.iterdir()):
        raise AgeCliError(f"--out {out}: not empty; continue that run with --resume --out {out}, "
                          f"or choose a new folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    return out, created


def _show_training(cfg, run_dir: Path) -> None:
    """The best epoch's validation metrics and the test metrics, as results.json records them."""
    summary = json.loads((run_dir / "results.json").read_text())
    rows = [{"set": f"val (best epoch {summary['best_epoch']})", **summary["val"]}]
    if "test" in summary:
        rows.append({"set": "test", **summary["test"]})
    sources = summary.get("sources", {})
    if len(sources) > 1:  # one source's rows would repeat the split's
        rows += [{"set": f"  {split} {name}", **metrics} for split in ("val", "test")
                 for name, by_split in sources.items() if (metrics := by_split.get(split))]
    columns = metric_columns(rows)
    out_console.print(metrics_table(f"{cfg.model.name} · {markup_text(cfg.preset)}", rows, [("set", "", "")] + columns))
    if columns != METRIC_COLUMNS:
        err_console.print(SPREAD_NOTE)
    err_console.print(f"Results saved to [bold]{markup_text(run_dir)}[/] (report.html, best.pt, last.pt, metrics.csv, curves.png, config.yaml)")


def check_resume_options(run_dir: Path, cfg, model: str | None, given: dict) -> None:
    """--resume continues a run exactly as it was configured: options that would change it are refused."""
    changed = [option for option, value in given.items() if value not in (None, [])]
    if changed:
        raise AgeCliError(f"--resume --out {run_dir} continues the run with its own settings, so "
                          f"{', '.join(changed)} cannot be given with it; start a new run to change them")
    from agecli.models import preset_family  # imports torch

    if model is not None and model not in (cfg.model.name, preset_family(cfg.model.name)):
        raise AgeCliError(f"--resume --out {run_dir}: this run trains '{cfg.model.name}', not '{model}'; "
                          f"leave MODEL out, or start a new run")
