"""Package trained runs as a built-in model: agecli/weights/NAME.pt.

  python scripts/package_model.py runs/train/utk-ssrnet-dist [--name default]
  python scripts/package_model.py RUN_A RUN_B RUN_C --flip --weights int8 --name default  # ensemble, flip, int8
  python scripts/package_model.py RUN_A RUN_B --flip --dry-run                      # validation metrics only
  python scripts/package_model.py RUN --point median --dry-run --against agecli/weights/lite0.pt  # better beyond noise?
  python scripts/package_model.py RUN --flip --calibrate --weights int8 --name default   # one network, calibrated ±
  python scripts/package_model.py agecli/weights/default.pt --calibrate --weights int8 --name default  # re-calibrate

Keeps weights, preprocessing and config (no optimizer state). One run is packaged as it is; several runs
(same preprocessing and validation split; architectures may differ) become one `ensemble` checkpoint.
`--weights float16|int8` stores the weights compactly. `--calibrate` fits a spread temperature on validation
(agecli/training/calibration.py) so that the ± means one standard deviation; for a run on several datasets it
also prints each source's own best temperature on validation (with a bootstrap interval) and on test, and the
temperatures at which its ±1 / ±2 shares meet 68 ± 5% / 95 ± 3%, if any. The
validation and test metrics of what is packaged are measured here, as stored, on the runs' own prepared data,
and recorded with the data it was trained on and its licence, which `age models` shows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.config import config_from_dict  # noqa: E402
from agecli.data.manifest import prepare_meta  # noqa: E402
from agecli.errors import AgeCliError  # noqa: E402
from agecli.metrics import age_metrics, paired_mae_difference  # noqa: E402
from agecli.modelio.checkpoint import (
    WEIGHT_FORMATS,
    compress_weights,
    load_checkpoint,
    model_from_checkpoint,
    restore_weights,
    save_checkpoint,
    stored_preprocess,
)
from agecli.modelio.packaging import ensemble_from_checkpoints  # noqa: E402
from agecli.training.calibration import (  # noqa: E402
    best_temperature,
    coverage,
    fit_temperature,
    in_band,
    shares_by_temperature,
)
from agecli.training.datasets import load_sources, source_specs, split_sources, stack_sources
from agecli.training.scoring import metrics_by_source, predict_crops

LICENCE = "non-commercial research only"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+",
                        help="run directories made by age train (their best.pt), or one packaged ensemble (.pt) to re-calibrate")
    parser.add_argument("--name", default="default")
    parser.add_argument("--out", type=Path, help="write here instead of agecli/weights/NAME.pt")
    parser.add_argument("--flip", action="store_true", help="also average each face with its mirror image")
    parser.add_argument("--shift", type=int, default=0,
                        help="also average four views moved diagonally by this many pixels (test-time augmentation)")
    parser.add_argument("--point", default="mean", choices=("mean", "median"),
                        help="report the mean or the median of the averaged age distribution")
    parser.add_argument("--weights", default="float32", choices=WEIGHT_FORMATS,
                        help="how weights are stored: float16 halves the file, int8 quarters it (measured as stored)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit a spread temperature on validation so that the ± covers errors like a standard deviation")
    parser.add_argument("--data", help="prepared data to measure on [default: the first run's data.manifest]")
    parser.add_argument("--trained-on", default="UTKFace train split")
    parser.add_argument("--against", type=Path,
                        help="a model file or run to compare with on the same validation faces: the MAE difference and its "
                             "95%% bootstrap interval (is the candidate better beyond the noise of these faces?)")
    parser.add_argument("--dry-run", action="store_true", help="print validation metrics only (for choosing), write nothing")
    args = parser.parse_args()
    try:
        package(args)
    except AgeCliError as err:
        sys.exit(f"error: {err}")


def package(args) -> None:
    states = [load_checkpoint(run / "best.pt" if run.is_dir() else run) for run in args.runs]
    packaged = len(states) == 1 and states[0]["model"]["name"] == "ensemble"  # its views and point are kept
    if packaged and (args.flip or args.shift or args.point != "mean"):
        raise AgeCliError(f"{args.runs[0]}: already an ensemble; only --calibrate and --weights apply to it")
    if packaged or (len(states) == 1 and not (args.flip or args.shift or args.point != "mean" or args.calibrate)):
        state = states[0]
        built = {"model": model_from_checkpoint(state), "model_name": state["model"]["name"],
                 "model_kwargs": state["model"]["kwargs"], "preprocess": stored_preprocess(state),
                 "config": state["config"]}
    else:
        built = ensemble_from_checkpoints(states, flip=args.flip, names=[str(r) for r in args.runs],
                                          shift=args.shift, point=args.point)

    # measure exactly what loading the stored file gives back
    built["model"].load_state_dict(restore_weights(*compress_weights(built["model"].state_dict(), args.weights)))
    preprocess = built["preprocess"]
    specs = [(args.data, 1.0)] if args.data else source_specs(states[0]["config"]["data"])
    sources = load_sources(specs)  # a run on several datasets is measured on each of them, as it trained
    crops, df = stack_sources(sources, preprocess.crop_size)
    val_splits = [split_sources(df, config_from_dict(s["config"]))[1] for s in states]
    for run, rows in zip(args.runs[1:], val_splits[1:]):
        if set(rows.index) != set(val_splits[0].index):  # a member validated on rows another trained on
            raise AgeCliError(f"{run}: its validation split differs from {args.runs[0]}'s; "  # flatters the average
                              "train members with the same data.split_seed")
    cfg, val_df = config_from_dict(states[0]["config"]), val_splits[0]
    test_df = df[df["split"] == cfg.data.test_split] if not args.dry_run else df.iloc[:0]  # test is not for choosing
    if args.calibrate:  # fitted on the untempered spread; an ensemble's ages do not depend on the temperature
        built["model"].spread_temperature = 1.0
    # each split is predicted once; test after calibrating, so that its spreads are the calibrated ones
    val_pred = predict_crops(built["model"], crops, val_df["cache_row"].to_numpy(), preprocess,
                             keep_logits=args.calibrate)
    calibration = calibrate(built, val_pred, val_df) if args.calibrate else {}
    preds = {"val": (val_df, val_pred)}
    if len(test_df):
        preds["test"] = (test_df, predict_crops(built["model"], crops, test_df["cache_row"].to_numpy(), preprocess,
                                                keep_logits=args.calibrate))
    metrics = {name: age_metrics(pred["age"], rows["age"].to_numpy()) for name, (rows, pred) in preds.items()}
    for name, m in metrics.items():
        print(f"{name}: MAE {m['mae']:.3f}  CA(3) {m['ca3']:.3f}  CA(5) {m['ca5']:.3f}  ({m['n']} faces)")
    if args.against:
        compare_on_validation(val_pred["age"] - val_df["age"].to_numpy(), val_df, args.against, sources)
    if args.calibrate and len(test_df):
        rows, pred = preds["test"]
        calibration["test_within"] = coverage(abs(pred["age"] - rows["age"].to_numpy()), pred["spread"])
        print("test: within ±1 / ±2 spreads: {:.1%} / {:.1%}".format(*calibration["test_within"]))
    by_source = {}  # test metrics of each dataset apart, recorded for `age models`
    for name, (rows, pred) in preds.items() if len(sources) > 1 else ():  # each dataset apart
        spread = {"spread": pred["spread"]} if "spread" in pred else {}
        for source, m in metrics_by_source(rows.assign(pred=pred["age"], **spread)).items():
            if name == "test":
                by_source[source] = {k: m[k] for k in ("mae", "ca3", "ca5", "n")}
            print(f"{name} {source}: MAE {m['mae']:.3f}  CA(3) {m['ca3']:.3f}  CA(5) {m['ca5']:.3f}  ({m['n']} faces)")
            if args.calibrate and name == "test":
                calibration[f"test_within_{source}"] = [m["within_1"], m["within_2"]]
                mean_spread = pred["spread"][(rows["source"] == source).to_numpy()].mean()
                print(f"test {source}: within ±1 / ±2 spreads: {m['within_1']:.1%} / {m['within_2']:.1%}; "
                      f"mean spread {mean_spread:.2f} years")
    if args.calibrate and len(sources) > 1:
        print_source_temperatures(preds, built["model"].ages, calibration["spread_temperature"])
    if args.dry_run:
        return
    members = [{"run": run.name, "val_mae": s["metrics"].get("mae")} for run, s in zip(args.runs, states)]
    if packaged:  # keep the record of how it was built
        members = states[0].get("info", {}).get("members", members)
        args.flip, args.shift, args.point = (states[0]["info"].get(k, v) for k, v in
                                             (("flip", False), ("shift", 0), ("point", "mean")))

    out = args.out or ROOT / "agecli" / "weights" / f"{args.name}.pt"
    save_checkpoint(out, **built, epoch=states[0]["epoch"], metrics=metrics.get("val", {}),
                    info={"trained_on": args.trained_on, "licence": LICENCE, "test_metrics": metrics.get("test", {}),
                          "test_metrics_by_source": by_source,
                          "val_metrics": metrics.get("val", {}), "members": members, "flip": args.flip,
                          "shift": args.shift, "point": args.point, "calibration": calibration,
                          "weights_format": args.weights},
                    weights_format=args.weights)
    print(f"{out} ({out.stat().st_size / 2**20:.2f} MiB, {out.stat().st_size / 1e6:.2f} MB)")


def compare_on_validation(error: np.ndarray, val_df, against: Path, sources: list) -> None:
    """Print the candidate's validation MAE minus `against`'s on the same faces, with its bootstrap interval."""
    state = load_checkpoint(against / "best.pt" if against.is_dir() else against)
    other, other_pre = model_from_checkpoint(state), stored_preprocess(state)
    rows = val_df["cache_row"].to_numpy()
    if other_pre.align != prepare_meta(sources[0].prepared).get("align", "none"):
        # the same faces cut as the other model cuts them: its own prepared data, matched row for row
        sources = load_sources(source_specs(state["config"]["data"]))
    crops, other_df = stack_sources(sources, other_pre.crop_size)  # cache_row counts across the stacked sources
    if not (val_df.index.isin(other_df.index).all()
            and (other_df.loc[val_df.index, "path"].to_numpy() == val_df["path"].to_numpy()).all()):
        raise AgeCliError(f"{against}: its data does not list the candidate's validation faces in the same rows")
    theirs = predict_crops(other, crops, rows, other_pre)["age"] - val_df["age"].to_numpy()
    d = paired_mae_difference(error, theirs)
    print(f"val: MAE {np.abs(theirs).mean():.3f} for {against}; difference {d['difference']:+.3f} years "
          f"(95% interval {d['low']:+.3f} to {d['high']:+.3f}; negative: the candidate is better)")


def calibrate(built: dict, pred: dict, val_df) -> dict:
    """Fit the ensemble's spread temperature on its untempered validation predictions (with logits) and store
    it in the model and its kwargs."""
    model = built["model"]
    sources = val_df["source"].to_numpy() if "source" in val_df else None
    fitted = fit_temperature(pred["logits"], model.ages, pred["age"], val_df["age"].to_numpy(), sources)
    model.spread_temperature = built["model_kwargs"]["spread_temperature"] = fitted["temperature"]
    print("val: spread temperature {temperature:.2f}{every}; within ±1 / ±2 spreads {b[0]:.1%} / {b[1]:.1%} -> "
          "{a[0]:.1%} / {a[1]:.1%}".format(temperature=fitted["temperature"], b=fitted["before"], a=fitted["after"],
                                           every=" (every source's validation shares in band)"
                                           if fitted["sources_in_band"] else ""))
    return {"spread_temperature": fitted["temperature"], "val_within": fitted["after"]}


def print_source_temperatures(preds: dict, ages, fitted: float, draws: int = 200) -> None:
    """Each source's own best temperature on each split, with a bootstrap interval on validation, the test
    coverage at the validation one (would a temperature per source, fitted on validation, hold on test?) and
    the temperatures at which the source's shares meet the target band (if none, its shares at its best T)."""
    def shares(logits: np.ndarray, error: np.ndarray) -> dict:
        # the errors as predictions against zeros: the shares are of |prediction - age|
        return shares_by_temperature(logits, ages, error, np.zeros(len(error)))

    rng, on_val = np.random.default_rng(0), {}
    for name, (rows, pred) in preds.items():  # val first
        # val was predicted untempered; test with the fitted temperature, which its logits carry as a divisor
        logits = pred["logits"] * (fitted if name == "test" else 1.0)
        for source in rows["source"].unique():
            keep = (rows["source"] == source).to_numpy()
            error = np.abs(pred["age"][keep] - rows["age"].to_numpy()[keep])
            table = shares(logits[keep], error)
            best = best_temperature(table)
            line = f"{name} {source}: its own best spread temperature {best:.2f}"
            if name == "val":
                on_val[source] = best
                resampled = [best_temperature(shares(logits[keep][i], error[i]))
                             for i in (rng.integers(0, keep.sum(), keep.sum()) for _ in range(draws))]
                line += " (95% bootstrap interval over its faces {:.2f} to {:.2f})".format(
                    *np.percentile(resampled, [2.5, 97.5]))
            elif source in on_val:
                line += "; at validation's {:.2f}, within ±1 / ±2 spreads {:.1%} / {:.1%}".format(
                    on_val[source], *table[on_val[source]])
            band = in_band(table)
            where = f"{band[0]:.2f} to {band[-1]:.2f}" if band else "none (at its best T {:.1%} / {:.1%})".format(
                *table[best])
            line += f"; ±1 / ±2 within 68 ± 5% / 95 ± 3% at T {where}"
            print(line)


if __name__ == "__main__":
    main()
