"""Issue 29: hostile or hand-edited model files, presets and run folders, and the hangs around them.

A small file must not make agecli allocate gigabytes, hang, or print a traceback: each case is one line naming
the file and the field, refused before anything the file declares is built. Where memory is the point the
loads run in a child process under a 2 GiB data limit (resource.RLIMIT_DATA), so the code before the fix fails
there instead of taking the machine's memory.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import resource
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from agecli.errors import AgeCliError
from agecli.modelio.checkpoint import load_checkpoint
from tests.helpers import age_main, assert_one_line_error, labelled_faces, run_age, tiny_checkpoint

MEMORY_LIMIT = 2 * 2**30


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from agecli.data.prepare import prepare

    root = tmp_path_factory.mktemp("models")
    faces = labelled_faces(root / "faces", 6)
    prepare("csv", faces, root / "prep")
    tiny = tiny_checkpoint(root / "tiny.pt", "small_resnet")
    return {"root": root, "prep": root / "prep", "tiny": tiny, "photo": faces / "f00.png",
            "state": torch.load(tiny, weights_only=True)}


def edited(world, path: Path, **fields) -> Path:
    """The tiny checkpoint with top-level fields replaced (Ellipsis: removed)."""
    state = dict(world["state"])
    for key, value in fields.items():
        if value is ...:
            state.pop(key, None)
        else:
            state[key] = value
    torch.save(state, path)
    return path


def run_limited(script: str, *args) -> subprocess.CompletedProcess:
    """python -c script ARGS in a child that cannot allocate more than MEMORY_LIMIT of data."""
    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-c", script, *map(str, args)], preexec_fn=limit, capture_output=True,
                          text=True, timeout=600, check=False, cwd=Path(__file__).resolve().parents[1])


AGE = "import sys; from agecli.cli.main import main; sys.argv = ['age', *sys.argv[1:]]; main()"


# ---- 1. what a model file declares is bounded before anything is allocated --------------------------------

LOAD_EACH = """
import sys
from agecli.errors import AgeCliError
from agecli.modelio.backends import load_backend
for path in sys.argv[1:]:
    try:
        load_backend(path, device="cpu")
        print("loaded", path)
    except AgeCliError as err:
        print("refused", err)
    except BaseException as err:
        print("failed", path, type(err).__name__)
"""


def compressed_huge_tensor(world, path: Path) -> Path:
    """A checkpoint whose one weight record is deflated and claims to expand to 3.75 GiB: a few KB on disk."""
    plain = edited(world, path.with_suffix(".plain.pt"), state_dict={"w": torch.zeros(2**18)})
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            compression = zipfile.ZIP_DEFLATED if info.filename.endswith("/data/0") else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info), compress_type=compression)
    data = bytearray(path.read_bytes())
    claimed = 0xF000_0000
    at = data.find(b"PK\x01\x02")  # central directory entries: uncompressed size at 24, local header offset at 42
    while at >= 0:
        name_length, = struct.unpack_from("<H", data, at + 28)
        if data[at + 46: at + 46 + name_length].endswith(b"/data/0"):
            struct.pack_into("<I", data, at + 24, claimed)
            local, = struct.unpack_from("<I", data, at + 42)
            struct.pack_into("<I", data, local + 22, claimed)
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(data)
    return path


def legacy_huge_storage(world, path: Path) -> Path:
    """torch.save's legacy (non-zip) layout whose one storage declares 2^30 floats: 280 KB on disk."""
    torch.save({**world["state"], "state_dict": {"w": torch.zeros(70_000)}}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    stream = io.BytesIO(bytes(data))
    for _ in range(3):  # magic number, protocol, system info; then the pickle that declares the storage
        for _op in pickletools.genops(stream):
            pass
    start, after_storage = stream.tell(), False
    for op, arg, pos in pickletools.genops(io.BytesIO(bytes(data[start:]))):
        after_storage = after_storage or arg == "storage"
        if after_storage and op.name == "BININT" and arg == 70_000:
            struct.pack_into("<i", data, start + pos + 1, 2**30)  # its numel
            break
    path.write_bytes(data)
    return path


def test_small_model_files_cannot_declare_gigabytes(world, tmp_path):
    base = world["state"]
    ensemble = {"name": "ensemble", "kwargs": {"members": [{"name": "small_resnet", "kwargs": {}}] * 100_000}}
    files = {
        "model.kwargs.members": edited(world, tmp_path / "ens.pt", model=ensemble),
        "parameter values": edited(world, tmp_path / "wide.pt", model={"name": "small_resnet", "kwargs": {
            "widths": [60000], "blocks": [1]}}),
        "'small_resnet' with over": edited(world, tmp_path / "deep.pt", model={"name": "small_resnet", "kwargs": {
            "widths": [24], "blocks": [1e9]}}),
        "preprocess.crop_size": edited(world, tmp_path / "crop.pt", preprocess={**base["preprocess"],
                                                                               "crop_size": 60000}),
        "record": compressed_huge_tensor(world, tmp_path / "zip.pt"),
        "storages declare": legacy_huge_storage(world, tmp_path / "legacy.pt"),
        # 10^10 values viewed on one stored float: restoring the float32 weights would write them all
        "state_dict declares": edited(world, tmp_path / "view.pt", state_dict={
            **base["state_dict"], "big": torch.zeros(1).expand(100_000, 100_000)}),
    }
    result = run_limited(LOAD_EACH, *files.values())
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == len(files), result.stdout + result.stderr[-2000:]
    for (field, path), line in zip(files.items(), lines):
        assert line.startswith(f"refused {path}:") and field in line, line


def test_nested_model_kwargs_are_refused_without_recursion(world, tmp_path):
    deep: list = []
    for _ in range(50):
        deep = [deep]
    path = edited(world, tmp_path / "nested.pt", model={"name": "small_resnet", "kwargs": {"widths": deep}})
    with pytest.raises(AgeCliError, match=r"nested.pt: model.kwargs.widths.* nested more than"):
        load_checkpoint(path)


@pytest.mark.parametrize("command", ["predict", "video"])
def test_predict_batch_is_bounded(world, tmp_path, command):
    target = world["photo"] if command == "predict" else tmp_path / "clip.avi"
    if command == "video":
        write_video(target, 64, 3)
    r = run_limited(AGE, "predict", target, "--model", world["tiny"], "--detector", "none", "--batch", "100000",
                    "--out", tmp_path / "out")
    assert_one_line_error(r, "--batch 100000", "1024")


# ---- 2. fields of the wrong type: one line through every command that loads a checkpoint ------------------

def wrong_fields(world) -> dict:
    state, sd = world["state"], world["state"]["state_dict"]
    first = next(k for k, v in sd.items() if v.dim() == 4)
    return {
        "format_version": {"format_version": "9"},
        "model must be a mapping": {"model": "small_resnet"},
        "no state_dict": {"state_dict": ...},
        "state_dict must be a mapping": {"state_dict": [1, 2]},
        "preprocess must be a mapping": {"preprocess": [64]},
        "preprocess.margin": {"preprocess": {**state["preprocess"], "margin": "wide"}},
        "preprocess.input_size": {"preprocess": {**state["preprocess"], "input_size": "64"}},
        "model.kwargs must be a mapping": {"model": {"name": "small_resnet", "kwargs": [24]}},
        f"state_dict.{first} has shape": {"state_dict": {**sd, first: torch.zeros(2, 2, 2, 2)}},
        f"weight_scales.{first}": {"weight_scales": {first: torch.ones(3, 1)}},
        "dropout probability": {"model": {"name": "small_resnet", "kwargs": {"dropout": 5}}},
        "config must be a mapping": {"config": "x"},
        "config.data must be a mapping": {"config": {"data": [1]}},
    }


def test_wrongly_typed_fields_are_one_line_naming_the_field(world, tmp_path):
    for i, (field, changes) in enumerate(wrong_fields(world).items()):
        path = edited(world, tmp_path / f"bad{i}.pt", **changes)
        with pytest.raises(AgeCliError) as caught:
            load_checkpoint(path)
        message = str(caught.value)
        assert message.startswith(str(path)) and field in message and "\n" not in message, (field, message)


@pytest.mark.parametrize("command", ["predict", "eval", "export", "teacher", "init"])
def test_every_command_refuses_a_bad_checkpoint_in_one_line(world, tmp_path, command):
    bad = edited(world, tmp_path / "bad.pt", format_version="9")
    out = tmp_path / "out"
    train = ["train", "small_resnet", "--preset", "utkface", "--data", world["prep"], "--epochs", "1",
             "--device", "cpu", "--out", out]
    args = {"predict": ["predict", world["photo"], "--model", bad, "--detector", "none", "--out", out],
            "eval": ["eval", bad, "--data", world["prep"], "--device", "cpu", "--out", out],
            "export": ["export", bad, "--output", tmp_path / "bad.onnx"],
            "teacher": [*train, "--teacher", bad],
            "init": [*train, "--init", bad]}[command]
    assert_one_line_error(age_main(*args, cwd=tmp_path), str(bad), "format_version")


# ---- 3. export metadata --------------------------------------------------------------------------------------

def onnx_with_metadata(path: Path, metadata: str | None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["age"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("age", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        helper.set_model_props(model, {"agecli": metadata})
    onnx.save(model, str(path))
    return path


GOOD_PREPROCESS = {"size": 64, "cache_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "RGB",
                   "margin": 0.0, "shift": 0.0, "age_min": 0, "age_max": 100}


@pytest.mark.parametrize(("metadata", "needle"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"input": {"size": 64}}), "no 'preprocess'"),
    (json.dumps({"input": {"size": 64}, "preprocess": {**GOOD_PREPROCESS, "margin": "x"}}), "preprocess.margin"),
    (json.dumps({"input": {"size": "64"}, "preprocess": GOOD_PREPROCESS}), "input.size"),
    (json.dumps({"input": {"size": 60000}, "preprocess": GOOD_PREPROCESS}), "input.size"),
])
def test_onnx_metadata_is_checked_field_by_field(tmp_path, metadata, needle):
    from agecli.modelio.backends import load_backend

    path = onnx_with_metadata(tmp_path / "m.onnx", metadata)
    with pytest.raises(AgeCliError, match=needle) as caught:
        load_backend(path, device="cpu")
    assert str(caught.value).startswith(str(path))


def test_torchscript_without_agecli_metadata_is_one_line(world, tmp_path):
    class Constant(torch.nn.Module):
        def forward(self, x):
            return (x.float().mean(dim=(1, 2, 3)),)

    path = tmp_path / "plain.torchscript.pt"
    torch.jit.save(torch.jit.script(Constant()), str(path))
    r = age_main("predict", world["photo"], "--model", path, "--allow-torchscript", "--detector", "none",
                 "--out", tmp_path / "out")
    assert_one_line_error(r, str(path), "agecli.json")


# ---- 4. presets ------------------------------------------------------------------------------------------------

def billion_laughs() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\nmodel: {name: small_resnet, kwargs: {laughs: *l9}}\n"


@pytest.mark.parametrize(("content", "needle"), [
    (billion_laughs(), "aliases expand to more than"),
    ("model: " + "[" * 200 + "]" * 200 + "\n", "nested more than"),
    ("model:\n" + "".join("  " * i + "a:\n" for i in range(1, 60)), "nested more than"),
    ("a: &x [1, *x]\n", "alias contains itself"),
    ("model: {name: caf\xe9}\n".encode("latin-1"), "not UTF-8"),
])
def test_hostile_presets_are_one_line(world, tmp_path, content, needle):
    preset = tmp_path / "hostile.yaml"
    preset.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = age_main("train", "small_resnet", "--preset", preset, "--data", world["prep"], "--out", tmp_path / "run",
                 cwd=tmp_path)
    assert_one_line_error(r, str(preset), needle)
    assert not (tmp_path / "run").exists()


# ---- 5. age report on run folders edited by hand -----------------------------------------------------------

def train_folder(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: ssrnet}\ndata: {manifest: x}\ntrain: {epochs: 2}\n")
    (run / "metrics.csv").write_text("epoch,train_loss,val_mae,val_ca3,val_ca5,lr\n1,3.0,9.5,0.2,0.4,0.001\n")
    (run / "results.json").write_text(json.dumps({"best_epoch": 1, "val": {"n": 3, "mae": 9.5, "ca3": 0.2,
                                                                            "ca5": 0.4}}))
    (run / "env.json").write_text(json.dumps({"data": "x", "seed": 0, "train_rows": 10, "val_rows": 3,
                                              "versions": {"agecli": "1"}}))
    return run


@pytest.mark.parametrize(("name", "content", "needle"), [
    ("config.yaml", "model: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ("config.yaml", "model: [1, 2]\n", "model must be a mapping"),
    ("results.json", json.dumps({"val": {"mae": 1.0}}), "best_epoch"),
    ("results.json", json.dumps({"best_epoch": 1, "val": {"mae": "low"}}), "val.mae"),
    ("metrics.csv", "step,loss\n1,2.0\n", "lacks column(s)"),
    ("metrics.csv", "epoch,train_loss,val_mae,val_ca3,val_ca5\n1,x,2,0.1,0.2\n", "column train_loss"),
    ("env.json", json.dumps({"train_rows": "ten"}), "train_rows"),
    ("env.json", json.dumps(["not", "an", "object"]), "JSON object"),
    ("env.json", json.dumps({"versions": [1]}), "versions"),
])
def test_report_on_hand_edited_run_folder_is_one_line(tmp_path, name, content, needle):
    run = train_folder(tmp_path)
    assert age_main("report", run).returncode == 0  # the untouched folder reports
    (run / name).write_text(content)
    assert_one_line_error(age_main("report", run), str(run / name), needle)


# ---- 6. video: nothing that blocks, frames over the pixel limit --------------------------------------------

def write_video(path: Path, side: int, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (side, side))
    for i in range(frames):
        writer.write(np.full((side, side, 3), 40 * i, np.uint8))
    writer.release()
    return path


def claim_frame_size(path: Path, side: int) -> Path:
    """The MJPEG AVI rewritten so that its headers and every frame's JPEG header claim side x side pixels."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<II", data, data.find(b"avih") + 8 + 32, side, side)
    struct.pack_into("<ii", data, data.find(b"strf") + 8 + 4, side, side)
    at = data.find(b"\xff\xc0")
    while at >= 0:
        struct.pack_into(">HH", data, at + 5, side, side)
        at = data.find(b"\xff\xc0", at + 2)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("side", [9000, 30000])
def test_video_frames_over_the_pixel_limit_are_an_error_not_no_face(world, tmp_path, side):
    video = claim_frame_size(write_video(tmp_path / f"huge{side}.avi", 64, 3), side)
    r = age_main("predict", video, "--model", world["tiny"], "--detector", "none", "--out", tmp_path / "out")
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())["videos"][0]
    assert record["status"] == "error", (r.stderr, record)
    assert ("megapixel" in record["error"]) and str(video.name) in record["error"], record


def source_error(out: Path) -> str:
    record = json.loads((out / "predictions.json").read_text())["videos"][0]
    assert record["status"] == "error", record
    return record["error"]


def test_source_fifo_is_refused_not_opened(world, tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    # a real process: the code before the fix blocks in OpenCV on the FIFO (the timeout only ends that failure)
    r = run_age("predict", "--source", fifo, "--model", world["tiny"], "--detector", "none", "--out",
                tmp_path / "out", timeout=300)
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert "--source" in source_error(tmp_path / "out") and "FIFO" in source_error(tmp_path / "out")


@pytest.mark.parametrize(("spec", "needle"), [("pipe:0", "not a camera number"), ("file:///dev/stdin", "file://"),
                                              ("/dev/null", "device"), ("nowhere", "not a camera number")])
def test_source_that_could_block_is_refused(world, tmp_path, spec, needle):
    age_main("predict", "--source", spec, "--model", world["tiny"], "--detector", "none", "--out", tmp_path / "out")
    error = source_error(tmp_path / "out")
    assert error.startswith(f"--source {spec}") and needle in error, error


# ---- 7. a refused pickle names the global ----------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_refused_pickle_names_the_global_without_torch_boilerplate(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(AgeCliError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "global posix.getcwd" in message and "\x1b" not in message and "weights_only" not in message, message


# ---- 8. an empty token is not "no token" ---------------------------------------------------------------------

def test_serve_refuses_an_empty_token(monkeypatch):
    from agecli.serve import server
    from agecli.serve.settings import ServeSettings

    def would_listen(host, port):
        raise AssertionError("went on to serve without a token")

    monkeypatch.setattr(server, "check_can_listen", would_listen)
    monkeypatch.setenv("AGECLI_SERVE_TOKEN", "")
    with pytest.raises(AgeCliError, match="AGECLI_SERVE_TOKEN: is empty"):
        server.serve(ServeSettings(), say=lambda line: None)
    monkeypatch.delenv("AGECLI_SERVE_TOKEN")
    from tests.helpers import age_main

    typed = age_main("serve", "--token", "")  # typed on the command line, not only through the environment
    assert typed.returncode == 1 and "--token / AGECLI_SERVE_TOKEN: is empty" in typed.stderr


# ---- 9. SIGTERM before the first epoch leaves no run folder ------------------------------------------------

SIGTERM_IN_SETUP = """
import os, signal, sys, time
from pathlib import Path
import agecli.training.engine as engine

def terminated(cfg, run_dir, *args, **kwargs):
    (Path(run_dir) / "config.yaml").write_text("half written")
    os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, while the run sets up
    time.sleep(120)

engine.train = terminated
sys.argv = ["age", *sys.argv[1:]]
from agecli.cli.main import main
main()
"""


def test_sigterm_before_the_first_epoch_removes_the_run_folder(world, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", SIGTERM_IN_SETUP, "train", "small_resnet", "--preset", "utkface",
                        "--data", str(world["prep"]), "--out", str(run)], capture_output=True, text=True,
                       timeout=600, check=False, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])  # as Ctrl-C
    assert not run.exists()
