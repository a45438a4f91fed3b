"""Training on several prepared datasets at once (data.sources), per-source metrics, and fine-tuning a
packaged (one-member, int8) model with train.init."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from agecli.config import resolve_config
from agecli.data.prepare import prepare
from agecli.errors import AgeCliError
from agecli.report.progress import NullReporter
from agecli.training.datasets import load_sources, source_specs, split_sources, stack_sources
from agecli.training.engine import build_model, set_up_training, train
from agecli.training.evaluation import run_eval
from tests.helpers import age_main, labelled_faces, tiny_checkpoint

CACHE = 72  # small_resnet's recipe: 72-px crops, 64-px input
TINY = {"model.name": "small_resnet", "model.pretrained": "none",
        "model.kwargs": {"age_min": 0, "age_max": 100, "widths": [8, 8, 8, 8], "blocks": [1, 1, 1, 1], "stem": 8},
        "data.cache_size": CACHE, "data.input_size": 64, "data.augment": "none", "loss.name": "mean_variance",
        "train.epochs": 1, "train.batch_size": 16, "train.device": "cpu", "data.val_fraction": 0.25}


def prepared(root, name: str, n: int, subjects: int = 0):
    """A prepared csv dataset of n synthetic faces; with `subjects`, each row names one of that many people."""
    faces = labelled_faces(root / f"{name}_faces", n)
    if subjects:
        lines = (faces / "labels.csv").read_text().splitlines()
        rows = [f"{line},p{i % subjects}" for i, line in enumerate(lines[1:])]
        (faces / "labels.csv").write_text("filename,age,subject\n" + "\n".join(rows) + "\n")
    return prepare("csv", faces, root / name, sizes=(CACHE,), test_fraction=0.25).out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    return {"plain": prepared(root, "plain", 24), "people": prepared(root, "people", 32, subjects=8),
            "unseen": prepared(root, "unseen", 12)}


@pytest.fixture(scope="module")
def trained(datasets, tmp_path_factory):
    """One epoch over two sources, the second weighted 2."""
    run = tmp_path_factory.mktemp("run")
    cfg = resolve_config(None, {**TINY, "data.sources": [str(datasets["plain"]),
                                                         {"name": str(datasets["people"]), "weight": 2.0}]})
    train(cfg, run)
    return run


def test_one_epoch_over_two_sources_records_metrics_per_source(trained):
    results = json.loads((trained / "results.json").read_text())
    assert set(results["sources"]) == {"plain", "people"}
    for split in ("val", "test"):
        per_source = [results["sources"][name][split] for name in ("plain", "people")]
        assert sum(m["n"] for m in per_source) == results[split]["n"]  # all together = the sources' faces
        for metrics in (*per_source, results[split]):
            assert {"mae", "ca3", "ca5", "within_1", "within_2"} <= set(metrics)
            assert 0 <= metrics["within_1"] <= metrics["within_2"] <= 1
    env = json.loads((trained / "env.json").read_text())
    assert env["sources"]["people"]["weight"] == 2.0 and env["sources"]["plain"]["test_rows"] == 6
    page = (trained / "report.html").read_text()
    assert "Per source dataset" in page and "people" in page and "all sources" in page
    header = page.split("</header>")[0]  # the run's facts name every source it trained on, with its weight
    assert f"{env['sources']['plain']['data']}, {env['sources']['people']['data']} (weight 2)" in header


def test_each_source_keeps_its_own_splits_and_subjects_never_cross(datasets):
    cfg = resolve_config(None, {**TINY, "data.sources": [str(datasets["plain"]), str(datasets["people"])]})
    _, df = stack_sources(load_sources(source_specs(cfg.to_dict()["data"])), CACHE)
    train_df, val_df = split_sources(df, cfg)
    test_df = df[df["split"] == "test"]
    for name, size in (("plain", 24), ("people", 32)):  # every row keeps its source, in exactly one split
        counts = [int((part["source"] == name).sum()) for part in (train_df, val_df, test_df)]
        assert sum(counts) == size and all(counts)
    people = [set(part.loc[part["source"] == "people", "subject"]) for part in (train_df, val_df, test_df)]
    assert not people[0] & people[1] and not people[0] & people[2] and not people[1] & people[2]
    # the test split is each manifest's own
    manifest = load_sources([(str(datasets["people"]), 1.0)])[0].rows
    assert set(test_df.loc[test_df["source"] == "people", "path"]) == set(manifest.loc[manifest["split"] == "test", "path"])


def test_a_source_may_hold_out_a_validation_share_of_its_own(datasets):
    def val_rows(people: dict | str) -> dict[str, set]:
        cfg = resolve_config(None, {**TINY, "data.sources": [str(datasets["plain"]), people]})
        _, df = stack_sources(load_sources(source_specs(cfg.to_dict()["data"])), CACHE)
        val_df = split_sources(df, cfg)[1]
        return {name: set(val_df.loc[val_df["source"] == name, "subject" if name == "people" else "path"])
                for name in ("plain", "people")}

    shared = val_rows(str(datasets["people"]))  # data.val_fraction 0.25 for both
    own = val_rows({"name": str(datasets["people"]), "val_fraction": 0.5})
    assert own["plain"] == shared["plain"]  # the other source keeps data.val_fraction
    pool_subjects = load_sources([(str(datasets["people"]), 1.0)])[0].rows.query("split != 'test'")["subject"].nunique()
    assert len(own["people"]) == round(pool_subjects * 0.5) > len(shared["people"])
    assert shared["people"] <= own["people"]  # the same seeded draw of people, only longer
    with pytest.raises(AgeCliError, match=r"data.sources\[1\].val_fraction must be in \[0, 1\), got 1.5"):
        val_rows({"name": str(datasets["people"]), "val_fraction": 1.5})


def test_source_weights_change_how_often_its_faces_are_drawn(datasets):
    def drawn_share(weight: float, seed: int = 0) -> tuple[float, np.ndarray]:
        sources = [str(datasets["plain"]), {"name": str(datasets["people"]), "weight": weight}]
        cfg = resolve_config(None, {**TINY, "data.sources": sources, "data.val_fraction": 0.0, "train.seed": seed})
        crops, df = stack_sources(load_sources(source_specs(cfg.to_dict()["data"])), CACHE)
        train_df, _ = split_sources(df, cfg)
        batches = set_up_training(cfg, crops, train_df, NullReporter()).batches
        people_rows = set(train_df.loc[train_df["source"] == "people", "cache_row"])
        drawn = []
        for epoch in range(1, 21):
            batches.set_epoch(epoch)
            drawn.append(batches.drawn_rows())
        drawn = np.concatenate(drawn)
        return float(np.isin(drawn, list(people_rows)).mean()), drawn

    even, _ = drawn_share(1.0)
    heavy, heavy_rows = drawn_share(4.0)
    people_share = 24 / (18 + 24)  # training rows: 3/4 of each source
    assert even == pytest.approx(people_share)  # equal weights: every face once per epoch
    heavy_expected = 4 * 24 / (18 + 4 * 24)
    assert heavy == pytest.approx(heavy_expected, abs=0.04) and heavy > even + 0.2
    assert np.array_equal(drawn_share(4.0)[1], heavy_rows)  # seeded: the same draw again
    assert not np.array_equal(drawn_share(4.0, seed=1)[1], heavy_rows)


def test_eval_names_a_source_the_checkpoint_never_trained_on(trained, datasets, tmp_path):
    notes = []
    result = run_eval(trained / "best.pt", datasets["unseen"], split="all", device="cpu", out=tmp_path / "unseen",
                      warn=notes.append)
    assert result["unseen"] == ["unseen"] and result["trained_on"] == ["plain", "people"]
    assert len(notes) == 1 and "unseen" in notes[0] and "never seen" in notes[0]
    summary = json.loads((tmp_path / "unseen" / "metrics.json").read_text())
    assert summary["unseen_sources"] == ["unseen"] and summary["sources"]["unseen"]["all"]["n"] == 12
    assert "Not trained on unseen" in (tmp_path / "unseen" / "report.html").read_text()

    notes.clear()  # a dataset it was trained on: no note; no --data: every source it was trained on
    seen = run_eval(trained / "best.pt", None, device="cpu", out=tmp_path / "seen", warn=notes.append)
    assert seen["unseen"] == [] and not notes
    assert set(seen["sources"]) == {"plain", "people"} and seen["metrics"]["n"] == 6 + 8
    assert "Per source dataset" in (tmp_path / "seen" / "report.html").read_text()
    run_eval(trained / "best.pt", datasets["plain"], device="cpu", out=tmp_path / "one")  # one source it knows:
    assert "Per source dataset" not in (tmp_path / "one" / "report.html").read_text()  # the metrics table says it


def test_age_eval_lists_each_source_only_when_there_are_several(trained, datasets, tmp_path):
    both = age_main("eval", "--model", trained / "best.pt", "--data", datasets["plain"], "--data", datasets["people"],
                    "--split", "test", "--out", tmp_path / "both", env={"COLUMNS": "200"})
    assert both.returncode == 0, both.stderr
    assert "source plain" in both.stdout and "source people" in both.stdout
    # the spread's coverage for each source and for all of them: the "calibration" of each row
    summary = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert "±1" in both.stdout and "±2" in both.stdout and "predicted spreads" in both.stderr
    for name in ("plain", "people"):
        row = next(line for line in both.stdout.splitlines() if f"source {name}" in line)
        assert f"{summary['sources'][name]['test']['within_2']:.1%}" in row
    for group in summary["by_age"]:  # and for each age group, on screen and in the report
        row = next(line for line in both.stdout.splitlines() if f"age {group['group']} " in line)
        assert f"{group['within_1']:.1%}" in row
    page = (tmp_path / "both" / "report.html").read_text()
    by_age_header = re.search(r"<th>true age</th>.*?</thead>", page)
    assert "within ±1 sd" in by_age_header.group(0)
    # the report's faces come from each source's own crop cache, so none is "missing" from the first source's
    faces = page.split('<section id="faces">')[1].split("</section>")[0]
    assert "not in the manifest" not in faces and faces.count("<img") == 2 * summary["n"]  # worst + sample
    one = age_main("eval", "--model", trained / "best.pt", "--data", datasets["plain"], "--split", "test",
                   "--out", tmp_path / "one", env={"COLUMNS": "200"})
    assert one.returncode == 0, one.stderr
    assert "source plain" not in one.stdout  # it would repeat the test row
    # predictions.csv: each face's source, last, where there are several; the one-source file is unchanged
    both_rows = pd.read_csv(tmp_path / "both" / "predictions.csv")
    assert list(both_rows.columns[:3]) == ["path", "age", "pred"] and both_rows.columns[-1] == "source"
    assert both_rows.groupby("source").size().to_dict() == {"plain": 6, "people": 8}
    assert "source" not in pd.read_csv(tmp_path / "one" / "predictions.csv").columns


def test_age_train_names_each_source_with_its_weight(datasets, tmp_path):
    tiny = [a for key, value in TINY.items() for a in ("--set", f"{key}={json.dumps(value)}")]
    sources = f"data.sources=[{datasets['plain']}, {{name: {datasets['people']}, weight: 2}}]"
    run = age_main("train", "small_resnet", *tiny, "--set", sources, "--out", tmp_path / "run",
                   env={"COLUMNS": "300"})
    assert run.returncode == 0, run.stderr
    assert f"on {datasets['plain']}, {datasets['people']} (weight 2) ->" in " ".join(run.stderr.split())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for name in ("plain", "people"):  # the closing table: each source's rows, with the spread's coverage
        row = next(line for line in run.stdout.splitlines() if f"test {name} " in line)
        assert f"{results['sources'][name]['test']['mae']:.3f}" in row
        assert f"{results['sources'][name]['test']['within_1']:.1%}" in row
    assert "±1" in run.stdout and "±2" in run.stdout


def test_distill_sources_teaches_only_the_faces_of_the_sources_it_names(datasets, tmp_path):
    teacher = tiny_checkpoint(tmp_path / "teacher.pt", "ssrnet_dist")
    sources = [str(datasets["plain"]), str(datasets["people"])]

    def set_up(only: list):
        cfg = resolve_config(None, {**TINY, "data.sources": sources, "distill.teacher": str(teacher),
                                    "distill.sources": only})
        crops, df = stack_sources(load_sources(source_specs(cfg.to_dict()["data"])), CACHE)
        train_df = split_sources(df, cfg)[0]
        return set_up_training(cfg, crops, train_df, NullReporter()), train_df

    t, train_df = set_up([str(datasets["people"])])  # a folder, as data.sources names it
    people = train_df["source"] == "people"
    assert t.teacher.taught[train_df.loc[people, "cache_row"]].all()
    assert not t.teacher.taught[train_df.loc[~people, "cache_row"]].any()

    x, y, rows = next(t.batches.with_rows())
    label_of = dict(zip(train_df["cache_row"], train_df["age"]))
    assert y.tolist() == [label_of[r] for r in rows]  # each face's rows travel with it
    taught = t.teacher.taught[rows]
    assert taught.any() and not taught.all()  # the first batch mixes both sources
    logits = t.model(x)["logits"].detach().requires_grad_()
    t.teacher.loss(torch.zeros(()), logits, x, rows).backward()
    pulled = logits.grad.abs().sum(1) > 0
    assert pulled[torch.from_numpy(taught)].all() and not pulled[torch.from_numpy(~taught)].any()

    assert set_up([])[0].teacher.taught is None  # no list: every face is taught
    with pytest.raises(AgeCliError, match=r"distill.sources: 'nowhere' is not one of this run's data.sources "
                                          r"\(plain, people\)"):
        set_up(["nowhere"])
    with pytest.raises(AgeCliError, match=r"config: distill.sources needs distill.teacher"):
        resolve_config(None, {**TINY, "data.sources": sources, "distill.sources": [sources[0]]})


def packaged_one_member(path, weights_format: str = "int8"):
    """A tiny small_resnet packaged as the built-in models are: a one-member ensemble with int8 weights."""
    from agecli.data.preprocess import Preprocess
    from agecli.modelio.checkpoint import load_checkpoint, save_checkpoint
    from agecli.modelio.packaging import ensemble_from_checkpoints
    from agecli.models import create_model

    torch.manual_seed(3)
    kwargs = TINY["model.kwargs"]
    member = create_model("small_resnet", **kwargs).eval()
    save_checkpoint(path.with_suffix(".member.pt"), model=member, model_name="small_resnet", model_kwargs=kwargs,
                    preprocess=Preprocess(input_size=64, crop_size=CACHE))
    built = ensemble_from_checkpoints([load_checkpoint(path.with_suffix(".member.pt"))], flip=True)
    save_checkpoint(path, **built, weights_format=weights_format)
    return path


def test_init_from_a_packaged_int8_ensemble_starts_from_its_member(tmp_path):
    from agecli.files.safe_load import load_raw
    from agecli.modelio.checkpoint import load_checkpoint

    package = packaged_one_member(tmp_path / "lite.pt")
    assert load_raw(package)["state_dict"]["members.0.features.0.weight"].dtype == torch.int8
    model = build_model(resolve_config(None, {**TINY, "train.init": str(package)}))
    stored = load_checkpoint(package)["state_dict"]  # int8 restored to float
    for key, value in model.state_dict().items():
        assert value.dtype == stored[f"members.0.{key}"].dtype
        assert torch.equal(value, stored[f"members.0.{key}"]), key


def test_init_that_fits_no_member_is_one_line(tmp_path):
    from agecli.errors import AgeCliError

    package = packaged_one_member(tmp_path / "lite.pt")
    wider = {**TINY["model.kwargs"], "widths": [16, 16, 16, 16]}
    with pytest.raises(AgeCliError, match="its weights do not fit small_resnet") as err:
        build_model(resolve_config(None, {**TINY, "model.kwargs": wider, "train.init": str(package)}))
    assert "\n" not in str(err.value)


def test_init_ensemble_takes_the_fitting_member_of_the_shipped_ensemble():
    from agecli.modelio.builtin import WEIGHTS_DIR
    from agecli.modelio.checkpoint import load_checkpoint

    if not (WEIGHTS_DIR / "ensemble.pt").is_file():
        pytest.skip("no shipped ensemble")
    state = load_checkpoint(WEIGHTS_DIR / "ensemble.pt")
    members = state["model"]["kwargs"]["members"]
    kwargs = members[-1]["kwargs"]  # the last member's architecture: the first member of that shape is taken
    model = build_model(resolve_config(None, {**TINY, "model.kwargs": kwargs, "train.init": "ensemble"}))
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    index = next(i for i in range(len(members))
                 if all(state["state_dict"].get(f"members.{i}.{key}", torch.empty(0)).shape == shape
                        for key, shape in shapes.items()))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["state_dict"][f"members.{index}.{key}"]), key


def test_aligned_chips_and_aligned_photos_share_one_crop_geometry(tmp_path):
    from agecli.training.datasets import crop_geometry

    def made(name: str, **meta) -> object:
        (tmp_path / name).mkdir()
        meta = {"detector": "retinaface", "margin": -0.03, "shift": 0.08, **meta}
        (tmp_path / name / "prepare.json").write_text(json.dumps(meta))
        return tmp_path / name

    chips, photos = made("chips", detect=False, align="five_point"), made("photos", detect=True, align="five_point")
    assert crop_geometry(chips) == crop_geometry(photos)  # both cut on their landmarks: no note at training
    boxed_chips, boxed_photos = made("boxed_chips", detect=False), made("boxed_photos", detect=True)
    assert crop_geometry(boxed_chips) != crop_geometry(boxed_photos)  # a whole chip is not a detector's box
    assert crop_geometry(made("other", detect=True, align="five_point", detector="yunet")) != crop_geometry(photos)
