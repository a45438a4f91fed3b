"""`age prepare`, `age train`, `age eval`, `age models`, `age presets`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

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
from agecli.errors import AgeCliError

FAMILIES = {"ssrnet": "ssrnet", "ssrnet_dist": "ssrnet", "mvloss": "mvloss",
            "resnet18": "mvloss", "resnet34": "mvloss", "resnet50": "mvloss", "small_resnet": "small_resnet",
            "efficientnet_lite0": "efficientnet_lite0"}


def prepare(
    dataset: Annotated[str, typer.Argument(help="utkface, fgnet, megaage, morph, imdb, wiki or csv.")],
    root: Annotated[Path, typer.Option("--root", help="The dataset as downloaded (for csv: the CSV file or its folder).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. \\[default: prepared/DATASET]")] = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Crop sizes to cache, comma-separated (64 for SSR-Net, 256 for ResNet).")] = "64",
    detect: Annotated[Optional[bool], typer.Option("--detect/--no-detect", help="Detect and crop the face. \\[default: on for morph, imdb, wiki]")] = None,
    detector: Annotated[str, typer.Option("--detector", help="Face detector used with --detect.")] = "default",
    margin: Annotated[Optional[float], typer.Option("--margin", help="Crop margin around a detected face, as a share of its size. \\[default: agecli.data.faces.DEFAULT_MARGIN]")] = None,
    test_fraction: Annotated[Optional[float], typer.Option("--test-fraction", help="Seeded test share for datasets without a split (by subject when known). \\[default: 0.2; 0 for fgnet]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of that split.")] = 0,
) -> None:
    """Read a dataset in its own layout; write a manifest and a cache of face crops that training reads."""
    from agecli.data.prepare import prepare as run_prepare
    from agecli.reporting import progress_bar

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
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="imagenet | none | PATH (ResNets, EfficientNet-Lite; imagenet is offline for efficientnet_lite0).")] = None,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this checkpoint's weights (SSR-Net v2 from v1).")] = None,
    teacher: Annotated[Optional[Path], typer.Option("--teacher", help="Distil from this checkpoint (one model or an ensemble): the student also learns its age distributions (distill.weight, distill.temperature).")] = None,
    amp: Annotated[bool, typer.Option("--amp", help="Mixed precision on CUDA.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Run name; numbered if taken. \\[default: MODEL-PRESET]")] = None,
    project: Annotated[Optional[Path], typer.Option("--project", help="Parent of run directories. \\[default: runs/train]")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run (its folder or last.pt) with its own settings; only --device may be given with it.")] = None,
) -> None:
    """Train a model from a preset; everything the run produces goes into one run directory.

    age train --resume RUN continues an interrupted run from its last completed epoch.
    """
    import contextlib
    import os

    from agecli.engine import resume_config
    from agecli.engine import train as run_train
    from agecli.reporting import RichReporter
    from agecli.utils import discard_on_failure

    fresh_dir = False
    if resume is not None:
        given = {"--preset": preset, "--data": data, "--set": set_, "--epochs": epochs, "--batch": batch,
                 "--seed": seed, "--pretrained": pretrained, "--init": init, "--teacher": teacher, "--amp": amp or None, "--name": name,
                 "--project": project}
        run_dir = resume.parent if resume.suffix == ".pt" else resume
        cfg = resume_config(run_dir)
        check_resume_options(run_dir, cfg, model, given)
        if device is not None:  # where it runs does not change the recipe
            cfg.train.device = device
        err_console.print(f"resuming [bold]{run_dir}[/]")
    else:
        cfg, run_dir, fresh_dir = _new_run(model, preset, data, set_, epochs, batch, seed, device, pretrained, init,
                                           teacher, amp, name, project or Path("runs/train"))
    if int(os.environ.get("RANK", 0)) == 0:
        err_console.print(f"training [bold]{cfg.model.name}[/] ({cfg.preset}) on [bold]{cfg.data.manifest}[/] "
                          f"-> {run_dir}")
    reporter = RichReporter(err_console) if int(os.environ.get("RANK", 0)) == 0 else None
    # a new run that fails before its first epoch leaves no folder behind
    with discard_on_failure(run_dir, keep_if="last.pt") if fresh_dir else contextlib.nullcontext():
        run_train(cfg, run_dir, reporter, resume=resume is not None)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    import json

    summary = json.loads((run_dir / "results.json").read_text())
    rows = [{"set": f"val (best epoch {summary['best_epoch']})", **summary["val"]}]
    if "test" in summary:
        rows.append({"set": "test", **summary["test"]})
    out_console.print(metrics_table(f"{cfg.model.name} · {cfg.preset}", rows, [("set", "", "")] + METRIC_COLUMNS))
    err_console.print(f"Results saved to [bold]{run_dir}[/] (report.html, best.pt, last.pt, metrics.csv, curves.png, config.yaml)")


def _new_run(model, preset, data, set_, epochs, batch, seed, device, pretrained, init, teacher, amp, name,
             project: Path):
    """(config, run folder, whether this call created the folder) for a new training run."""
    import os

    from agecli.config import parse_overrides, resolve_config
    from agecli.utils import increment_dir

    if model is None:
        raise AgeCliError("missing MODEL: age train MODEL --preset NAME (e.g. age train ssrnet --preset paper), "
                          "or age train --resume RUN")
    for option, value, low in (("--epochs", epochs, 1), ("--batch", batch, 1), ("--seed", seed, 0)):
        check_int(option, value, low, SEED_LIMIT if option == "--seed" else None)
    overrides = parse_overrides(set_ or [])
    shortcuts = {"data.manifest": data, "train.epochs": epochs, "train.batch_size": batch, "train.seed": seed,
                 "train.device": device, "model.pretrained": pretrained,
                 "train.init": str(init) if init else None, "train.amp": amp or None,
                 "distill.teacher": str(teacher) if teacher else None}
    overrides.update({k: v for k, v in shortcuts.items() if v is not None})
    family = FAMILIES.get(model, model)
    if model not in FAMILIES and not preset:
        from agecli.models import list_models

        raise AgeCliError(f"unknown model '{model}'; choose one of: {', '.join(list(FAMILIES))} "
                          f"(models: {', '.join(list_models())})")
    cfg = resolve_config(preset or "paper", overrides, family=family)
    if model in FAMILIES and model not in ("ssrnet", "mvloss") and "model.name" not in overrides:
        cfg.model.name = model  # `age train resnet18 --preset mvloss/paper`
    label = (name or f"{model}-{Path(cfg.preset).stem if cfg.preset.endswith('.yaml') else cfg.preset.split('/')[-1]}")
    if os.environ.get("AGECLI_RUN_DIR"):
        run_dir = Path(os.environ["AGECLI_RUN_DIR"])
    elif int(os.environ.get("WORLD_SIZE", 1)) > 1:
        run_dir = project / label  # every torchrun rank must pick the same folder: no numbering
    else:
        return cfg, increment_dir(project, label), True
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, run_dir, False


def check_resume_options(run_dir: Path, cfg, model: str | None, given: dict) -> None:
    """--resume continues a run exactly as it was configured: options that would change it are refused."""
    changed = [option for option, value in given.items() if value not in (None, [])]
    if changed:
        raise AgeCliError(f"--resume {run_dir} continues the run with its own settings, so {', '.join(changed)} "
                          f"cannot be given with it; start a new run to change them")
    if model is not None and model not in (cfg.model.name, FAMILIES.get(cfg.model.name)):
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
    from agecli.checkpoint import load_checkpoint
    from agecli.engine import evaluate_checkpoint
    from agecli.plots import plot_error_by_age
    from agecli.report import build_report_or_warn
    from agecli.paths import check_output_dir
    from agecli.utils import increment_dir, write_csv_atomic

    if out is not None:
        check_output_dir(out, "--out")
    if data is None:
        data = load_checkpoint(checkpoint).get("config", {}).get("data", {}).get("manifest")
        if not data:
            raise AgeCliError(f"{checkpoint}: records no dataset; pass --data")
    result = evaluate_checkpoint(checkpoint, data, split, device)
    out_dir = out or increment_dir("runs/eval", checkpoint.stem if checkpoint.parent.name in ("", ".") else checkpoint.parent.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds = result["predictions"]
    write_csv_atomic(out_dir / "predictions.csv", preds.to_dict("records"), list(preds.columns))
    plot_error_by_age(preds["pred"], preds["age"], out_dir / "error_by_age.png", title=f"{checkpoint} on {split}")
    m = result["metrics"]
    out_console.print(metrics_table(f"{checkpoint} · {result['data']} · split {split}",
                                    [{"set": split, **m}] + [{"set": f"  age {g['group']}", **g} for g in result["by_age"]],
                                    [("set", "", "")] + METRIC_COLUMNS))
    err_console.print("CA(n): share of images with |predicted - true age| < n years, on the unrounded prediction.")
    payload = {"checkpoint": str(checkpoint), "data": result["data"], "split": split, **m, "by_age": result["by_age"]}
    emit_json(payload, json_path)
    from agecli.utils import write_json_atomic

    write_json_atomic(out_dir / "metrics.json", {**payload, **result["record"]})
    build_report_or_warn(out_dir)
    err_console.print(f"Results saved to [bold]{out_dir}[/] (report.html, metrics.json, predictions.csv, error_by_age.png)")


def models() -> None:
    """List the built-in trained model with its metrics, and the registered architectures."""
    from rich.table import Table

    from agecli.models import MODELS, builtin_models

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
    table.add_column("name")
    table.add_column("description")
    for name, (_, description) in MODELS.items():
        table.add_row(name, description)
    out_console.print(table)


def presets() -> None:
    """List the shipped presets; copy one with `age presets --show NAME > my.yaml`."""
    from agecli.config import list_presets

    for name in list_presets():
        out_console.print(name)
