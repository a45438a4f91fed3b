"""How the package is put together: no import cycles, every module importable, registry knowledge in
the registry (a new model is one file plus one registry line), run folders and eval outputs in the library."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import agecli
from agecli.cli.app import app
from agecli.config import list_presets, preset_summary
from agecli.errors import AgeCliError
from agecli.files.run_dirs import new_run_dir
from agecli.training.recipes import config_for_model
from tests.helpers import labelled_faces, tiny_checkpoint

PACKAGE = Path(agecli.__file__).resolve().parent
OPTIONAL = {"fastapi", "uvicorn", "multipart", "python_multipart", "onnx", "onnxruntime"}  # extras, not dependencies


def module_files() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> set[str]:
    """Every agecli module a file imports, wherever the statement stands: at the top, inside functions, under
    `if TYPE_CHECKING`. `from agecli.x import y` names the module agecli.x.y where there is one, else agecli.x."""
    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {resolve(n) for n in names if n == "agecli" or n.startswith("agecli.")} - {None, module}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def package_of(module: str) -> str:
    """agecli.predict.video -> agecli.predict; a module directly under agecli/ is its own package."""
    return ".".join(module.split(".")[:2])


# The layers of docs/architecture.md: a package imports only packages of its own layer or below, and two
# packages of one layer import each other in one direction at most (no package cycle).
LAYERS = {
    "agecli": 0, "agecli.errors": 0, "agecli.files": 0, "agecli.system": 0,
    "agecli.config": 1, "agecli.data": 1, "agecli.metrics": 1,
    "agecli.models": 2, "agecli.report": 2,
    "agecli.modelio": 3,
    "agecli.predict": 4, "agecli.training": 4,
    "agecli.serve": 5, "agecli.bench": 5,
    "agecli.cli": 6, "agecli.__main__": 6,
}
TOP_LEVEL_MODULES = {"agecli", "agecli.__main__", "agecli.config", "agecli.errors", "agecli.metrics"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_imports_inside_functions_and_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from agecli.data import crops\n"
                      "def f():\n    from agecli.modelio.checkpoint import load_model\n")
    modules = module_files()
    assert imports_of(source, "agecli.x", modules) == {"agecli.data.crops", "agecli.modelio.checkpoint"}


def test_agecli_has_no_import_cycle_between_modules():
    graph = import_graph()
    assert len(graph) > 60 and "agecli.modelio.checkpoint" in graph["agecli.modelio.builtin"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_agecli_has_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        packages.setdefault(package_of(module), set()).update(package_of(m) for m in imported)
    packages = {name: found - {name} for name, found in packages.items()}
    assert find_cycle(packages) is None, " -> ".join(find_cycle(packages))


def test_no_package_imports_one_above_it():
    upward = sorted(f"{module} ({LAYERS[package_of(module)]}) imports {other} ({LAYERS[package_of(other)]})"
                    for module, imported in import_graph().items() for other in imported
                    if LAYERS[package_of(other)] > LAYERS[package_of(module)])
    assert upward == []


def test_every_package_has_a_layer_and_few_modules_sit_at_the_top():
    modules = module_files()
    assert {package_of(m) for m in modules} <= set(LAYERS)
    assert {m for m in modules if m.count(".") <= 1 and not (PACKAGE / m.split(".")[-1]).is_dir()} \
        <= TOP_LEVEL_MODULES


def test_every_module_imports_in_a_fresh_interpreter():
    """One new interpreter imports every module, so a module that only works after some other import
    (a hidden cycle, a missing import) fails here; modules needing an absent optional extra are skipped."""
    code = (
        "import importlib, json, sys\n"
        f"optional = {sorted(OPTIONAL)!r}\n"
        "failed = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as err:\n"
        "        if (err.name or '').split('.')[0] not in optional:\n"
        "            failed[name] = repr(err)\n"
        "    except Exception as err:\n"
        "        failed[name] = repr(err)\n"
        "print(json.dumps(failed))\n"
    )
    names = sorted(module_files())
    done = subprocess.run([sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True,
                          timeout=300, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


# ---------------------------------------------------------------------------- registry and presets

def test_model_names_pick_their_family_preset():
    assert config_for_model("resnet18", "paper").model.name == "resnet18"  # mvloss/paper with ResNet18
    assert config_for_model("resnet18", "paper").preset == "mvloss/paper"
    assert config_for_model("mvloss", "paper").model.name == "resnet34"  # a family: the preset decides
    assert config_for_model("ssrnet", "utkface").model.name == "ssrnet_dist"
    assert config_for_model("ssrnet_dist", "utkface").model.name == "ssrnet_dist"
    with pytest.raises(AgeCliError, match="unknown model 'nonet'.*mvloss"):
        config_for_model("nonet", None)
    # a short preset name is looked up in MODEL's family: a misspelt MODEL is what to name, not the preset
    with pytest.raises(AgeCliError, match=r"unknown model 'ssrnte' \(did you mean 'ssrnet'\?\)"):
        config_for_model("ssrnte", "paper")
    assert config_for_model("anything", "ssrnet/paper").model.name == "ssrnet"  # a full preset name decides
    # without --preset: the family's paper recipe, its only preset, or a one-line choice
    assert config_for_model("ssrnet", None).preset == "ssrnet/paper"
    assert config_for_model("small_resnet", None).preset == "small_resnet/utkface"
    with pytest.raises(AgeCliError, match=r"efficientnet_lite0 has no 'paper' preset; choose one with --preset "
                                          r"\(aligned, mixed, utkface\)"):
        config_for_model("efficientnet_lite0", None)


def test_a_new_model_is_one_class_plus_one_registry_line(monkeypatch):
    """The README's claim: registering a class is all `age train`, checkpoints and `age models` need."""
    import torch

    from agecli.modelio.checkpoint import model_from_checkpoint
    from agecli.models import MODELS, ModelEntry, create_model
    from agecli.models.base import AgeModel, DistributionHead, age_range

    class TinyNet(AgeModel):
        def __init__(self, width: int = 4):
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.AdaptiveAvgPool2d(1),
                                                torch.nn.Flatten())
            self.head = DistributionHead(width, 101)
            self.register_buffer("ages", age_range(0, 100))

    monkeypatch.setitem(MODELS, "tinynet", ModelEntry(TinyNet, "a test model", "small_resnet"))
    cfg = config_for_model("tinynet", "utkface")
    assert (cfg.preset, cfg.model.name) == ("small_resnet/utkface", "tinynet")
    model = create_model("tinynet", width=8).eval()
    state = {"model": {"name": "tinynet", "kwargs": {"width": 8}}, "state_dict": model.state_dict()}
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(model_from_checkpoint(state)(x)["age"], model(x)["age"])
    models = CliRunner().invoke(app, ["models"])
    assert models.exit_code == 0 and "tinynet" in models.output


def test_presets_show_prints_the_yaml_with_its_comments():
    assert "ssrnet/paper" in list_presets()
    shown = CliRunner().invoke(app, ["presets", "--show", "ssrnet/paper"])
    assert shown.exit_code == 0, shown.output
    text = (PACKAGE.parent / "presets" / "ssrnet" / "paper.yaml").read_text()
    assert shown.output == text and "# " in text
    unknown = CliRunner().invoke(app, ["presets", "--show", "ssrnet/papr"])
    assert unknown.exit_code != 0 and "did you mean 'ssrnet/paper'" in str(unknown.exception)


def test_presets_list_each_preset_with_the_first_sentence_of_its_header(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("# SSR-Net (Yang et al., IJCAI 2018; 0.2 * mean) on\n# 64 px. 90 epochs.\nmodel: {}\n# not the header\n")
    assert preset_summary(str(own)) == "SSR-Net (Yang et al., IJCAI 2018; 0.2 * mean) on 64 px."
    summaries = {name: preset_summary(name) for name in list_presets()}
    for name, summary in summaries.items():  # one sentence that fits a line: what the listing can show
        assert summary.endswith(".") and 20 < len(summary) <= 110 and "\n" not in summary, (name, summary)
    listing = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "250"})
    assert listing.exit_code == 0, listing.output
    for name, summary in summaries.items():
        assert any(name in line and summary in line for line in listing.output.splitlines()), name


# ---------------------------------------------------------------------------- run folders and eval files

def test_run_folders_are_numbered_for_one_process_and_fixed_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.delenv("AGECLI_RUN_DIR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert new_run_dir(tmp_path, "exp") == (tmp_path / "exp", True)
    assert new_run_dir(tmp_path, "exp") == (tmp_path / "exp2", True)
    monkeypatch.setenv("WORLD_SIZE", "2")  # every rank must agree on the folder
    assert new_run_dir(tmp_path, "exp") == (tmp_path / "exp", False)
    monkeypatch.setenv("AGECLI_RUN_DIR", str(tmp_path / "chosen"))
    assert new_run_dir(tmp_path, "exp") == (tmp_path / "chosen", False) and (tmp_path / "chosen").is_dir()


def test_run_eval_writes_the_eval_files_for_a_library_caller(tmp_path, monkeypatch):
    from agecli.data.prepare import prepare
    from agecli.training.evaluation import EVAL_FILES, run_eval

    prepared = prepare("csv", labelled_faces(tmp_path / "faces", 6), tmp_path / "prep").out
    tiny_checkpoint(tmp_path / "tiny.pt")
    monkeypatch.chdir(tmp_path)
    result = run_eval("tiny.pt", prepared, split="all", device="cpu")  # named after the file: no run folder
    assert result["out_dir"] == Path("runs/eval/tiny")
    for name in EVAL_FILES:
        assert (tmp_path / "runs" / "eval" / "tiny" / name).is_file(), name
    saved = json.loads((result["out_dir"] / "metrics.json").read_text())
    assert saved["n"] == 6 and saved["mae"] == pytest.approx(result["metrics"]["mae"])


def test_no_default_points_at_the_development_checkout():
    """The installed package stands alone: nothing in agecli/ reaches for ../shared beside the source tree."""
    pattern = re.compile(r"""(\.\./shared|["']shared["'])""")
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{n}" for path in module_files().values()
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_benchmarks_that_time_agecli_run_it_with_the_heap_age_keeps():
    """`age` makes glibc keep freed activation buffers (agecli.cli.main), which doubles Lite0's .pt speed; a
    benchmark that times or weighs agecli's models in its own process without it measures another program."""
    root = PACKAGE.parent / "benchmarks"
    runs_agecli = re.compile(r"from agecli\.(training|predict|modelio\.(backends|checkpoint))\b")
    measures = re.compile(r"perf_counter|time\.time\(|VmHWM")
    timed = [path.name for path in sorted(root.glob("*.py"))
             if runs_agecli.search(path.read_text()) and measures.search(path.read_text())]
    assert "model_speed.py" in timed and "lopo_fold_time.py" in timed
    assert [name for name in timed if "keep_freed_memory()" not in (root / name).read_text()] == []
