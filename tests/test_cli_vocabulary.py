"""One CLI vocabulary: one flag per meaning, one help text per flag, old spellings kept for one release with a
one-line note, and docs/cli.md generated from the app.

The library function a command ends in is replaced by one that records its arguments and stops the command
with a one-line error, so each test checks what the command line turns into without doing the work.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest
import typer

from agecli.cli.app import app
from agecli.cli.common import HELP, note_deprecated
from agecli.errors import AgeCliError
from tests.helpers import age_main, assert_one_line_error, synthetic_face

ROOT = Path(__file__).resolve().parents[1]
STOP = "stopped before the work"


def capture(monkeypatch, target: str) -> list[dict]:
    """Replace `target` (module.function) by a stand-in that records its bound arguments and raises a
    one-line error; returns the list the calls are recorded in."""
    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    signature = inspect.signature(getattr(module, name))
    calls: list[dict] = []

    def stand_in(*args, **kwargs):
        calls.append(dict(signature.bind(*args, **kwargs).arguments))
        raise AgeCliError(STOP)

    monkeypatch.setattr(module, name, stand_in)
    return calls


def notes(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("note:")]


def assert_stopped(result) -> None:
    """The command parsed and reached the library (no usage error, no other failure)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {STOP}", result.stderr


def leaves(command=None, path: tuple[str, ...] = ()):
    """(command path, command) of every command of the app (Typer ships its own click: no isinstance)."""
    command = command or typer.main.get_command(app)
    if getattr(command, "commands", None) is None:
        yield " ".join(path), command
        return
    for name, sub in command.commands.items():
        yield from leaves(sub, (*path, name))


def visible_options():
    """(command path, flag, option) of every option a user sees in --help (hidden = deprecated)."""
    for path, command in leaves():
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                for flag in [*param.opts, *param.secondary_opts]:
                    yield path, flag, param


def commands_with(flag: str) -> set[str]:
    return {path for path, name, _ in visible_options() if name == flag}


# ---------------------------------------------------------------------------- layout and docs


MODULES = {"prepare": "prepare", "train": "train", "eval": "eval", "models": "models", "presets": "presets",
           "predict": "predict", "export": "export", "lopo": "lopo", "bench": "bench", "report": "report",
           "serve": "serve", "import ssrnet-port": "import_model"}


def test_each_command_lives_in_its_own_module():
    found = {path: command.callback.__module__ for path, command in leaves()}
    assert found == {path: f"agecli.cli.{module}" for path, module in MODULES.items()}
    wiring = (ROOT / "agecli" / "cli" / "app.py").read_text()
    assert "def " not in wiring  # app.py only wires the commands


def test_docs_cli_md_is_generated_from_the_app_and_current():
    from agecli.cli.docs import DOC_PATH, cli_markdown

    assert DOC_PATH == ROOT / "docs" / "cli.md"
    assert DOC_PATH.read_text(encoding="utf-8") == cli_markdown(), "stale: run python scripts/cli_docs.py"


def test_docs_list_every_command_and_visible_option_but_no_hidden_one():
    from agecli.cli.docs import cli_markdown

    text = cli_markdown()
    for path, flag, _ in visible_options():
        assert f"## age {path}" in text and flag in text, (path, flag)
    for hidden in ("--no-detect", "--project", "Deprecated: use"):  # the old spellings stay out of the reference
        assert hidden not in text


# ---------------------------------------------------------------------------- one help per flag, one flag per meaning

# flags whose help may differ between commands, with the reason; empty: every flag reads the same everywhere
HELP_MAY_DIFFER: dict[str, str] = {}


def test_every_flag_has_one_help_text_across_commands():
    helps: dict[str, dict[str, list[str]]] = {}
    for path, flag, option in visible_options():
        helps.setdefault(flag, {}).setdefault(option.help, []).append(path)
    differing = {flag: by_help for flag, by_help in helps.items() if len(by_help) > 1 and flag not in HELP_MAY_DIFFER}
    assert not differing, json.dumps(differing, indent=1)


def test_shared_options_take_their_help_from_common():
    shared = {"--model", "--out", "--output", "--data", "--device", "--preset", "--set", "--json", "--detector",
              "--workers", "--resume", "--seed", "--pretrained", "--epochs", "--batch", "--shard", "--root"}
    assert shared <= set(HELP)
    for path, flag, option in visible_options():
        if flag in shared:
            assert option.help == HELP[flag], (path, flag)
    assert len({path for path, flag, _ in visible_options() if flag == "--pretrained"}) == 2  # train and lopo


def test_one_flag_per_meaning():
    assert commands_with("--model") == {"predict", "serve", "eval"}
    assert commands_with("--out") == {"prepare", "train", "eval", "lopo", "predict"}  # folders
    assert commands_with("--output") == commands_with("-o") == {"export", "import ssrnet-port"}  # one file
    assert commands_with("--detector") == {"prepare", "predict", "serve"}
    assert commands_with("--workers") == {"predict"}  # threads
    assert commands_with("--processes") == {"serve"}
    assert commands_with("--root") == {"prepare", "lopo", "bench"}
    assert commands_with("--no-detect") == commands_with("--project") == commands_with("--name") == set()
    resume = [option for _, flag, option in visible_options() if flag == "--resume"]
    assert len(resume) == 2 and all(option.is_flag for option in resume)  # a switch in train and predict


def test_the_deprecation_note_is_one_line_on_stderr(capsys):
    note_deprecated("--no-detect", "--detector none")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "note: --no-detect is deprecated; use --detector none\n"


# ---------------------------------------------------------------------------- new and old spellings

EXPORT_NOTE = "note: --out FILE is deprecated; use --output FILE (or -o FILE)"
DETECT_NOTE = "note: --no-detect is deprecated; use --detector none"

# id: (library function, what to compare, new spelling, old spelling, the old one's note)
SPELLINGS = {
    "eval --model": ("agecli.training.evaluation.run_eval", ["checkpoint", "data"],
                     ["eval", "--model", "m.pt", "--data", "d"], ["eval", "m.pt", "--data", "d"],
                     "note: age eval CHECKPOINT is deprecated; use age eval --model CHECKPOINT"),
    "train --out": ("agecli.training.engine.train", ["run_dir", "resume"],
                    ["train", "ssrnet", "--data", "d", "--out", "runs/train/x"],
                    ["train", "ssrnet", "--data", "d", "--project", "runs/train", "--name", "x"],
                    "note: --project/--name is deprecated; use --out RUN_DIR"),
    "train --resume": ("agecli.training.engine.resume_config", ["run_dir"],
                       ["train", "--resume", "--out", "runs/train/x"], ["train", "--resume", "runs/train/x"],
                       "note: --resume runs/train/x is deprecated; use --resume --out runs/train/x"),
    "train --resume=": ("agecli.training.engine.resume_config", ["run_dir"],
                        ["train", "ssrnet", "--resume", "--out", "runs/x"], ["train", "--resume=runs/x", "ssrnet"],
                        "note: --resume runs/x is deprecated; use --resume --out runs/x"),
    "predict --detector none": ("agecli.predict.job.run_predict", ["paths", "options"],
                                ["predict", "p.jpg", "--detector", "none", "--workers", "3"],
                                ["predict", "p.jpg", "--no-detect", "--workers", "3"], DETECT_NOTE),
    "prepare --detector none": ("agecli.data.prepare.prepare", ["dataset", "detect", "detector"],
                                ["prepare", "morph", "--root", "r", "--detector", "none"],
                                ["prepare", "morph", "--root", "r", "--no-detect"], DETECT_NOTE),
    "prepare --detector default": ("agecli.data.prepare.prepare", ["dataset", "detect", "detector"],
                                   ["prepare", "csv", "--root", "r", "--detector", "default"],
                                   ["prepare", "csv", "--root", "r", "--detect"],
                                   "note: --detect is deprecated; use --detector default"),
    "serve --processes": ("agecli.serve.server.serve", ["workers"], ["serve", "--processes", "3"],
                          ["serve", "--workers", "3"], "note: age serve --workers is deprecated; use --processes"),
    "bench --root": ("agecli.bench.runner.run_benchmarks", ["data"], ["bench", "--root", "raw"],
                     ["bench", "--data", "raw"], "note: age bench --data DIR is deprecated; use --root DIR"),
    "export --output": ("agecli.modelio.export.export", ["checkpoint", "out"],
                        ["export", "m.pt", "--output", "m.onnx"], ["export", "m.pt", "--out", "m.onnx"], EXPORT_NOTE),
    "export -o": ("agecli.modelio.export.export", ["checkpoint", "out"],
                  ["export", "m.pt", "-o", "m.onnx"], ["export", "m.pt", "--out", "m.onnx"], EXPORT_NOTE),
    "import --output": ("agecli.modelio.ssrnet_port.import_ssrnet_port", ["src", "out"],
                        ["import", "ssrnet-port", "p.pth", "-o", "p.pt"],
                        ["import", "ssrnet-port", "p.pth", "--out", "p.pt"], EXPORT_NOTE),
}


def prepared_stub(folder: Path) -> None:
    """A folder that `--data d` resolves to: age train checks its data before it calls the library."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_text("")


@pytest.mark.parametrize("case", SPELLINGS, ids=str)
def test_the_new_spelling_works_and_the_old_one_does_the_same_with_a_note(case, monkeypatch, tmp_path):
    target, keys, new, old, note = SPELLINGS[case]
    prepared_stub(tmp_path / "d")
    calls = capture(monkeypatch, target)
    result = age_main(*new, cwd=tmp_path)
    assert_stopped(result)
    assert notes(result) == []
    result = age_main(*old, cwd=tmp_path)
    assert_stopped(result)
    assert notes(result) == [note]
    assert len(calls) == 2
    assert {k: calls[0][k] for k in keys} == {k: calls[1][k] for k in keys}


def test_what_the_new_spellings_mean(monkeypatch, tmp_path):
    predict = capture(monkeypatch, "agecli.predict.job.run_predict")
    assert_stopped(age_main("predict", "p.jpg", "--detector", "none", "--workers", "3", cwd=tmp_path))
    options = predict[0]["options"]
    assert options.detector == "none" and options.no_detect and options.workers == 3  # threads
    prepare = capture(monkeypatch, "agecli.data.prepare.prepare")
    for args, detect, detector in ((["--detector", "none"], False, "default"), (["--detector", "yunet"], True, "yunet"),
                                   ([], None, "default")):  # left out: the dataset decides, as before
        assert_stopped(age_main("prepare", "morph", "--root", "r", *args, cwd=tmp_path))
        assert (prepare[-1]["detect"], prepare[-1]["detector"]) == (detect, detector)
    serve = capture(monkeypatch, "agecli.serve.server.serve")
    assert_stopped(age_main("serve", "--processes", "2", cwd=tmp_path))
    assert serve[0]["workers"] == 2  # the library's processes
    train = capture(monkeypatch, "agecli.training.engine.train")
    prepared_stub(tmp_path / "d")
    assert_stopped(age_main("train", "ssrnet", "--data", "d", "--out", "mine", cwd=tmp_path))
    assert train[0]["run_dir"] == Path("mine") and train[0]["resume"] is False
    resume = capture(monkeypatch, "agecli.training.engine.resume_config")
    assert_stopped(age_main("train", "--resume", "--out", "mine/last.pt", cwd=tmp_path))
    assert resume[0]["run_dir"] == Path("mine")


@pytest.mark.parametrize("args, needle", [
    (["eval", "a.pt", "--model", "b.pt"], "unexpected argument 'a.pt'"),
    (["eval", "--data", "d"], "missing --model"),
    (["train", "--resume"], "--resume: name the run folder to continue with --out RUN_DIR"),
    (["train", "ssrnet", "--out", "x", "--name", "y"], "give only --out"),
    (["export", "m.pt", "--out", "a.onnx", "-o", "b.onnx"], "give only --output"),
    (["bench", "--data", "a", "--root", "b"], "give only --root"),
    (["prepare", "csv", "--root", "r", "--detect", "--detector", "none"], "give only --detector"),
    (["lopo", "report"], "age report RUN_DIR"),
])
def test_mixing_old_and_new_spellings_is_a_one_line_error(args, needle, tmp_path):
    assert_one_line_error(age_main(*args, cwd=tmp_path), needle)


def test_train_out_refuses_a_folder_that_holds_something(monkeypatch, tmp_path):
    capture(monkeypatch, "agecli.training.engine.train")
    prepared_stub(tmp_path / "d")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert_one_line_error(age_main("train", "ssrnet", "--data", "d", "--out", "full", cwd=tmp_path),
                          "--out full: not empty", "--resume --out full")
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------- lopo: --out, and report


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder with prepared/fgnet: 2 subjects x 2 synthetic faces."""
    from agecli.data.prepare import prepare

    raw = tmp_path_factory.mktemp("raw")
    lines = ["filename,age,subject"]
    for subject in (1, 2):
        for j in range(2):
            synthetic_face(raw / f"s{subject}_{j}.png", 10 + 20 * j + subject, size=64, seed=10 * subject + j)
            lines.append(f"s{subject}_{j}.png,{10 + 20 * j + subject},{subject:03d}")
    (raw / "labels.csv").write_text("\n".join(lines) + "\n")
    work = tmp_path_factory.mktemp("work")
    prepare("csv", raw, work / "prepared" / "fgnet", test_fraction=0.0)
    return work


def test_lopo_out_is_the_run_folder_and_project_name_still_work(workdir, monkeypatch):
    calls = capture(monkeypatch, "agecli.training.lopo.run_lopo")
    result = age_main("lopo", "fgnet", "--out", "runs/lopo/x", "--epochs", "1", cwd=workdir)
    assert_stopped(result)
    assert notes(result) == []
    result = age_main("lopo", "fgnet", "--name", "x", "--epochs", "1", cwd=workdir)
    assert_stopped(result)
    assert notes(result) == ["note: --project/--name is deprecated; use --out RUN_DIR"]
    assert Path(calls[0]["run_dir"]) == Path(calls[1]["run_dir"]) == Path("runs/lopo/x")


def test_lopo_report_forwards_to_age_report_with_a_note(workdir, monkeypatch):
    run = workdir / "runs" / "lopo" / "done"
    run.mkdir(parents=True)
    (run / "lopo.json").write_text("{}")
    calls = capture(monkeypatch, "agecli.training.lopo.report")
    result = age_main("report", run, cwd=workdir)
    assert_stopped(result)
    assert notes(result) == []
    result = age_main("lopo", "report", "done", cwd=workdir)  # a NAME under runs/lopo, as before
    assert_stopped(result)
    assert notes(result) == ["note: age lopo report is deprecated; use age report RUN_DIR"]
    assert Path(calls[0]["run_dir"]).resolve() == Path(workdir / calls[1]["run_dir"]).resolve() == run.resolve()


# ---------------------------------------------------------------------------- the user's own commands


def test_the_users_commands_work_exactly_as_written_without_a_note(workdir, monkeypatch):
    prepare = capture(monkeypatch, "agecli.data.prepare.prepare")
    result = age_main("prepare", "megaage", "--root", "DIR", cwd=workdir)
    assert_stopped(result)
    assert notes(result) == [] and prepare[0]["dataset"] == "megaage" and prepare[0]["detect"] is None

    train = capture(monkeypatch, "agecli.training.engine.train")
    prepared_stub(workdir / "prepared" / "megaage")  # as `age prepare megaage --root DIR` would leave it
    result = age_main("train", "ssrnet", "--preset", "paper", cwd=workdir)
    assert_stopped(result)
    assert notes(result) == [] and train[0]["cfg"].preset == "ssrnet/paper"
    assert train[0]["run_dir"] == Path("runs/train/ssrnet-paper")

    lopo = capture(monkeypatch, "agecli.training.lopo.run_lopo")
    result = age_main("lopo", "fgnet", "--subjects", "all", cwd=workdir)
    assert_stopped(result)
    assert notes(result) == [] and lopo[0]["subjects"] == "all"
    assert Path(lopo[0]["run_dir"]) == Path("runs/lopo/fgnet-ssrnet-paper")

    predict = capture(monkeypatch, "agecli.predict.job.run_predict")
    result = age_main("predict", "photo.jpg", "--draw", cwd=workdir)
    assert_stopped(result)
    assert notes(result) == [] and predict[0]["paths"] == ["photo.jpg"]
    assert predict[0]["options"].draw and predict[0]["options"].detector == "default"
