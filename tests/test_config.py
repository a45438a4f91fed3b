import pytest

from agecli.config import (
    config_from_dict,
    list_presets,
    parse_overrides,
    resolve_config,
)
from agecli.errors import AgeCliError


def test_ssrnet_paper_preset_carries_reference_recipe():
    cfg = resolve_config("paper", family="ssrnet")
    assert cfg.preset == "ssrnet/paper"
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.data.input_size) == (50, 90, 64)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 0.001, 1e-4)
    assert (cfg.loss.name, cfg.sched.name, cfg.sched.step_size, cfg.sched.gamma) == ("l1", "step", 30, 0.1)
    assert cfg.data.augment == "none" and cfg.data.val_fraction == 0.1 and cfg.train.select == "ca3"


def test_mvloss_presets():
    cfg = resolve_config("mvloss/paper")
    assert cfg.model.name == "resnet34" and (cfg.model.kwargs["age_min"], cfg.model.kwargs["age_max"]) == (0, 69)
    assert (cfg.data.age_min, cfg.data.age_max) == (0, 69)  # stated once, in model.kwargs; the data follow
    assert (cfg.loss.name, cfg.loss.lambda_mean, cfg.loss.lambda_var) == ("mean_variance", 0.2, 0.05)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.002, 0.9)
    assert cfg.sched.milestones == [40, 60] and cfg.train.freeze_epochs == 10 and cfg.train.batch_size == 64
    assert (cfg.data.cache_size, cfg.data.input_size, cfg.data.augment) == (256, 224, "mvloss")
    assert resolve_config("softmax", family="mvloss").loss.name == "softmax"
    assert {"ssrnet/paper", "ssrnet/v1", "ssrnet/v2", "mvloss/paper", "mvloss/softmax"} <= set(list_presets())
    assert resolve_config("ssrnet/v1").loss.name == "mse"


def test_overrides_are_typed_and_applied():
    cfg = resolve_config("ssrnet/paper", parse_overrides(["optim.lr=0.0005", "train.epochs=3", "data.augment=flip"]))
    assert cfg.optim.lr == 0.0005 and cfg.train.epochs == 3 and cfg.data.augment == "flip"
    # an int where a float is expected is fine
    assert resolve_config("ssrnet/paper", {"optim.lr": 1}).optim.lr == 1.0


def test_one_model_argument_can_be_overridden_without_restating_the_others():
    cfg = resolve_config("ssrnet/utkface", parse_overrides(["model.kwargs.widths=[16, 32]", "model.kwargs.dropout=0.1"]))
    assert cfg.model.kwargs == {"age_min": 0, "age_max": 100, "dropout": 0.1, "widths": [16, 32]}
    assert resolve_config("ssrnet/utkface").model.kwargs["dropout"] == 0.2  # the preset itself is untouched


def test_unknown_key_suggests_close_match():
    with pytest.raises(AgeCliError, match=r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        resolve_config("ssrnet/paper", parse_overrides(["optim.lrr=0.1"]))


def test_wrong_type_shows_example():
    with pytest.raises(AgeCliError, match=r"train\.epochs must be int.*example"):
        resolve_config("ssrnet/paper", parse_overrides(["train.epochs=many"]))


def test_unknown_preset_lists_known():
    with pytest.raises(AgeCliError, match="unknown preset 'papr'.*did you mean 'ssrnet/paper'"):
        resolve_config("papr", family="ssrnet")


def test_preset_file_with_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("optim:\n  lr: 0.001\n  warmup: 5\n")
    with pytest.raises(AgeCliError, match=r"mine\.yaml: unknown key 'optim\.warmup'"):
        resolve_config(str(bad))
    bad.write_text("train:\n  batch_size: fifty\n")
    with pytest.raises(AgeCliError, match=r"mine\.yaml: train\.batch_size must be int"):
        resolve_config(str(bad))


def test_config_round_trips_through_dict():
    cfg = resolve_config("mvloss/paper", {"train.epochs": 7})
    assert config_from_dict(cfg.to_dict()) == cfg


def test_malformed_override():
    with pytest.raises(AgeCliError, match="not key=value"):
        parse_overrides(["optim.lr"])


def test_split_seed_fixes_the_validation_rows_across_training_seeds():
    import pandas as pd

    from agecli.training.datasets import split_rows

    df = pd.DataFrame({"split": ["train"] * 200 + ["test"] * 20, "subject": [""] * 220})

    def val_rows(**overrides):
        return set(split_rows(df, resolve_config("ssrnet/paper", overrides))[1].index)

    assert len(val_rows()) == 20 and max(val_rows()) < 200  # 10% of the train split, never test rows
    assert val_rows(**{"train.seed": 1}) != val_rows()  # by default the draw follows train.seed (as LOPO folds need)
    assert val_rows(**{"train.seed": 1, "data.split_seed": 0}) == val_rows()
    assert val_rows(**{"train.seed": 7, "data.split_seed": 3}) == val_rows(**{"train.seed": 3})


def test_retired_train_workers_loads_from_old_configs_but_is_refused_as_an_override():
    """train.workers never did anything (there is no DataLoader): old config.yaml files and checkpoints
    that hold it still load, while `--set train.workers=4`, which would change nothing, is refused."""
    from agecli.config import config_from_dict

    old = resolve_config("ssrnet/paper").to_dict()
    old["train"]["workers"] = 0
    assert config_from_dict(old).train.epochs == 90
    with pytest.raises(AgeCliError, match="'train.workers' was removed"):
        resolve_config("ssrnet/paper", {"train.workers": 4})


def test_override_takes_a_list_written_as_in_a_preset():
    written = "data.sources=[utkface, {name: morph, weight: 4}]"
    cfg = resolve_config("efficientnet_lite0/mixed", parse_overrides([written]))
    assert cfg.data.sources == ["utkface", {"name": "morph", "weight": 4}]
    python = "data.sources=['utkface', {'name': 'morph', 'weight': 4}]"
    assert parse_overrides([python]) == parse_overrides([written])
    assert parse_overrides(["train.init=[unclosed"]) == {"train.init": "[unclosed"}  # not YAML: a string, as before
    assert parse_overrides(["optim.lr=1e-4"]) == {"optim.lr": 1e-4}  # a number, not YAML 1.1's string
