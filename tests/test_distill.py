"""Distillation (`age train MODEL --teacher CKPT`): the student learns the teacher's distributions too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from agecli.config import resolve_config
from agecli.data.cache import open_crops
from agecli.data.prepare import prepare
from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.modelio.checkpoint import load_model
from agecli.training.distill import Teacher
from agecli.training.engine import train
from agecli.training.scoring import evaluate
from tests.helpers import synthetic_face, tiny_checkpoint

RECIPE = {"model.name": "ssrnet_dist", "model.kwargs": {"age_min": 0, "age_max": 100}, "loss.name": "mean_variance",
          "data.cache_size": 64, "data.input_size": 64, "data.val_fraction": 0.25, "data.train_split": "",
          "optim.lr": 0.002, "sched.name": "none", "train.batch_size": 16, "train.device": "cpu",
          "train.select": "mae"}


def _faces(folder, n: int, noise: float, seed: int):
    """n synthetic faces whose brightness encodes the age; the labels carry uniform noise of +-noise years."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        age = 5 + (i * 7) % 70
        synthetic_face(folder / f"f{i:03d}.png", age, size=64, seed=seed * 1000 + i)
        rows.append(f"f{i:03d}.png,{max(0, round(age + rng.uniform(-noise, noise)))}")
    (folder / "labels.csv").write_text("filename,age\n" + "\n".join(rows) + "\n")
    return folder


def _train(tmp_path, name, data, epochs, **extra):
    run = tmp_path / name
    run.mkdir()
    train(resolve_config(None, {**RECIPE, "data.manifest": str(data), "train.epochs": epochs, **extra}), run)
    return run / "best.pt"


@pytest.fixture
def one_thread():
    """One intra-op thread for this test only: left set, it would slow every later test in the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_student_with_a_teacher_beats_the_same_student_without_one(tmp_path, one_thread):
    clean = tmp_path / "clean"
    prepare("csv", _faces(tmp_path / "clean_faces", 160, noise=0, seed=1), clean, sizes=(64,), test_fraction=0)
    noisy = tmp_path / "noisy"  # few faces and noisy labels: what a teacher's soft targets help most with
    prepare("csv", _faces(tmp_path / "noisy_faces", 48, noise=25, seed=2), noisy, sizes=(64,), test_fraction=0)
    held = tmp_path / "held"
    prepare("csv", _faces(tmp_path / "held_faces", 60, noise=0, seed=3), held, sizes=(64,), test_fraction=0)

    teacher = _train(tmp_path, "teacher", clean, epochs=12)
    plain = _train(tmp_path, "plain", noisy, epochs=8)  # at 4 epochs the outcome varied between CPUs
    student = _train(tmp_path, "student", noisy, epochs=8, **{"distill.teacher": str(teacher), "distill.weight": 0.8})

    held_df = pd.read_csv(held / "manifest.csv", keep_default_na=False)
    crops = open_crops(held, 64)

    def mae(ckpt):
        model, preprocess, _ = load_model(ckpt)
        return evaluate(model, crops, held_df, preprocess)["mae"]

    assert mae(student) < mae(plain) - 1.0, (mae(student), mae(plain), mae(teacher))


def test_teacher_converts_the_batch_to_its_own_preprocessing(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "t.pt", "ssrnet_dist", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5],
                           channel_order="BGR", input_size=48)
    student = Preprocess()  # ImageNet mean and std, RGB
    teacher = Teacher(str(ckpt), student, torch.arange(0, 101.0), weight=0.5, temperature=2.0)
    rgb = torch.rand(2, 3, 64, 64)
    as_student = (rgb - torch.tensor(student.mean).view(1, 3, 1, 1)) / torch.tensor(student.std).view(1, 3, 1, 1)
    expected = torch.nn.functional.interpolate((rgb.flip(1) - 0.5) / 0.5, size=(48, 48), mode="bilinear",
                                               align_corners=False)
    assert torch.allclose(teacher.models[0].teacher_input(as_student), expected, atol=1e-5)


def test_a_teacher_over_other_ages_or_a_regression_student_is_one_line(tmp_path):
    single = tiny_checkpoint(tmp_path / "s.pt", "ssrnet")
    with pytest.raises(AgeCliError, match="teacher predicts a single age"):
        Teacher(str(single), {"mean": [0] * 3, "std": [1] * 3, "channel_order": "RGB"}, torch.arange(0, 101.0), 0.5, 1.0)
    dist = tiny_checkpoint(tmp_path / "d.pt", "ssrnet_dist")
    with pytest.raises(AgeCliError, match="single age; distillation needs"):
        Teacher(str(dist), {"mean": [0] * 3, "std": [1] * 3, "channel_order": "RGB"}, None, 0.5, 1.0)


def test_several_teachers_are_averaged_in_probability_space(tmp_path):
    a = tiny_checkpoint(tmp_path / "a.pt", "ssrnet_dist", input_size=48)
    b = tiny_checkpoint(tmp_path / "b.pt", "ssrnet_dist", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    student = Preprocess()  # ImageNet mean and std, RGB
    ages = torch.arange(0, 101.0)
    x = torch.randn(3, 3, 64, 64)
    both = Teacher(f"{a},{b}", student, ages, weight=0.5, temperature=2.0)
    alone = [Teacher(str(p), student, ages, weight=0.5, temperature=2.0) for p in (a, b)]
    expected = torch.stack([t.log_probs(x).exp() for t in alone]).mean(0).log()
    assert len(both.models) == 2
    assert torch.allclose(both.log_probs(x), expected, atol=1e-5)
    assert not torch.allclose(alone[0].log_probs(x), alone[1].log_probs(x), atol=1e-3)  # two different teachers


def test_a_teacher_may_be_named_as_a_shipped_model(tmp_path, monkeypatch):
    from agecli.modelio import builtin

    tiny_checkpoint(tmp_path / "mine.pt", "ssrnet_dist")
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", tmp_path)
    monkeypatch.chdir(tmp_path / "..")  # no file called 'mine' here: the name is a shipped model's
    named = Teacher("mine", Preprocess(), torch.arange(0, 101.0), weight=0.5, temperature=2.0)
    by_path = Teacher(str(tmp_path / "mine.pt"), Preprocess(), torch.arange(0, 101.0), weight=0.5, temperature=2.0)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(named.log_probs(x), by_path.log_probs(x))
