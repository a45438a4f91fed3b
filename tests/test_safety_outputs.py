"""Outputs that stay where they were asked to go, and say the truth (issue 29 items 2, 4, 6, parts of 7/8; issue 28).

Nothing is written through a link; one run at a time per output folder; `age eval --out` replaces only its own
files; a NaN age is an error, never an estimate; a CSV cell never runs as a formula; the spread has one name;
edited run files and unhelpful exceptions become one readable line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agecli.errors import AgeCliError
from agecli.files.atomic import (
    open_append,
    spreadsheet_safe,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from agecli.files.locks import LOCK_NAME, folder_lock, lock_holder
from agecli.predict.outputs import CSV_COLUMNS, older_header
from agecli.predict.predictor import failed_photo
from tests.helpers import (
    age_main,
    assert_one_line_error,
    labelled_faces,
    synthetic_face,
    tiny_checkpoint,
    write_photos,
)

N_PHOTOS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Photos, a prepared dataset, and models: a plain one, a distribution one, and one that gives NaN ages."""
    from agecli.data.prepare import prepare

    root = tmp_path_factory.mktemp("world")
    photos = write_photos(root / "photos", N_PHOTOS, lambda path, i: synthetic_face(path, 10 + 10 * i, seed=i),
                          name="p{i}.png")
    faces = labelled_faces(root / "faces", 8)
    prepare("csv", faces, root / "prep")
    return {"root": root, "photos": photos, "photo": photos / "p0.png", "prep": root / "prep",
            "tiny": tiny_checkpoint(root / "tiny.pt"), "dist": tiny_checkpoint(root / "dist.pt", "ssrnet_dist"),
            "nan_weights": _nan_weights(root / "nan.pt")}


def _nan_weights(path: Path) -> Path:
    from agecli.data.preprocess import Preprocess
    from agecli.modelio.checkpoint import save_checkpoint
    from agecli.models import create_model

    kwargs = {"age_min": 0, "age_max": 100}
    model = create_model("ssrnet_dist", **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_checkpoint(path, model=model, model_name="ssrnet_dist", model_kwargs=kwargs,
                    preprocess=Preprocess(margin=0.2, shift=0.0))
    return path


def predict(world, *args, model="tiny", cwd=None):
    return age_main("predict", *args, "--model", world[model], "--detector", "none", "--device", "cpu", cwd=cwd)


def strict(path: Path):
    """The JSON in `path`, refusing the bare NaN / Infinity that Python's json accepts by default."""
    def refuse(word):
        raise AssertionError(f"{path}: bare {word} in JSON")
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)


# ---- 1. nothing is written through a link ------------------------------------------------------------


@pytest.mark.parametrize("name, content", [
    ("predictions.jsonl", '{"path": "mine", "faces": []}\n'),
    ("predictions.csv", ",".join(older_header(CSV_COLUMNS)) + "\nmine\n"),
])
def test_predict_refuses_an_output_that_is_a_link(world, tmp_path, name, content):
    mine = tmp_path / "mine.txt"
    mine.write_text(content)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / name).symlink_to(mine)
    r = predict(world, world["photo"], "--out", tmp_path / "o")
    assert_one_line_error(r, name, "symbolic link")
    assert mine.read_text() == content and (tmp_path / "o" / name).is_symlink()


def test_every_writer_refuses_links_and_non_regular_files(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("MY LINE\n")
    link = tmp_path / "link.txt"
    link.symlink_to(mine)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (link, fifo, tmp_path):
        for write in (lambda p: write_text_atomic(p, "x"), lambda p: write_json_atomic(p, {}),
                      lambda p: write_csv_atomic(p, [], ["a"]), lambda p: open_append(p, encoding="utf-8")):
            with pytest.raises(AgeCliError, match=re.escape(str(target))):
                write(target)
    assert mine.read_text() == "MY LINE\n" and link.is_symlink()
    with open_append(tmp_path / "new.txt", encoding="utf-8") as f:  # an ordinary file is still written
        f.write("ok\n")
    assert (tmp_path / "new.txt").read_text() == "ok\n"


# ---- 2. one run at a time per output folder ------------------------------------------------------------


def _ended_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _write_lock(folder: Path, pid: int, host: str = platform.node()) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "started": "2026-01-01T00:00:00+00:00"}))


def test_second_predict_into_a_locked_folder_is_refused_naming_the_holder(world, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "o", sleeper.pid)
        r = predict(world, world["photo"], "--out", tmp_path / "o")
        assert_one_line_error(r, "--out", f"pid {sleeper.pid}", platform.node(), "2026-01-01")
        assert not (tmp_path / "o" / "predictions.jsonl").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_of_another_host_is_respected(world, tmp_path):
    _write_lock(tmp_path / "o", 1, host="another-host.example")
    assert_one_line_error(predict(world, world["photo"], "--out", tmp_path / "o"), "another-host.example")


def test_stale_lock_of_a_killed_run_is_taken_over_and_removed_at_the_end(world, tmp_path):
    _write_lock(tmp_path / "o", _ended_pid())
    r = predict(world, world["photo"], "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert strict(tmp_path / "o" / "predictions.json")["summary"]["with_faces"] == 1
    assert not (tmp_path / "o" / LOCK_NAME).exists()


def test_folder_lock_is_exclusive_and_released_on_error(tmp_path):
    with folder_lock(tmp_path / "run") as folder:
        assert lock_holder(folder)["pid"] == os.getpid()
        with pytest.raises(AgeCliError, match=f"pid {os.getpid()}"), folder_lock(folder):
            pass
    assert lock_holder(tmp_path / "run") is None
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "run"):
        raise RuntimeError("the run failed")
    assert lock_holder(tmp_path / "run") is None
    assert not (tmp_path / "run").exists()  # created by the lock, left empty: removed


def test_eval_into_a_locked_folder_is_refused(world, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "e", sleeper.pid)
        r = age_main("eval", world["tiny"], "--data", world["prep"], "--split", "all", "--device", "cpu",
                     "--out", tmp_path / "e")
        assert_one_line_error(r, "--out", f"pid {sleeper.pid}")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_train_into_a_locked_run_folder_is_refused_before_any_work(tmp_path):
    from agecli.config import resolve_config
    from agecli.training.engine import train

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path / "run", sleeper.pid)
        cfg = resolve_config("ssrnet/paper", {"data.manifest": str(tmp_path / "no-such-data")})
        with pytest.raises(AgeCliError, match=f"pid {sleeper.pid}"):
            train(cfg, tmp_path / "run", resume=True)
    finally:
        sleeper.kill()
        sleeper.wait()


# ---- 3. age eval --out replaces only its own earlier files ---------------------------------------------


@pytest.mark.parametrize("name", ["predictions.csv", "metrics.json", "report.html", "error_by_age.png"])
def test_eval_out_never_replaces_a_users_file(world, tmp_path, name):
    out = tmp_path / "e"
    out.mkdir()
    (out / name).write_text("my own file\n")
    r = age_main("eval", world["tiny"], "--data", world["prep"], "--split", "all", "--device", "cpu", "--out", out)
    assert_one_line_error(r, "--out", name)
    assert (out / name).read_text() == "my own file\n"


def test_eval_out_replaces_its_own_earlier_output(world, tmp_path):
    args = ("eval", world["tiny"], "--data", world["prep"], "--split", "all", "--device", "cpu",
            "--out", tmp_path / "e")
    for _ in range(2):
        r = age_main(*args)
        assert r.returncode == 0, r.stderr
    assert strict(tmp_path / "e" / "metrics.json")["n"] == 8
    assert not (tmp_path / "e" / LOCK_NAME).exists()


# ---- 4. a non-finite age is a failure ------------------------------------------------------------------


def test_predict_with_a_model_giving_nan_fails_every_photo(world, tmp_path):
    r = predict(world, world["photos"], "--out", tmp_path / "o", model="nan_weights")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    data = strict(tmp_path / "o" / "predictions.json")
    assert data["summary"]["errors"] == N_PHOTOS and data["summary"]["faces"] == 0
    for photo in data["photos"]:
        assert photo["status"] == "error" and "non-finite age" in photo["error"] and photo["faces"] == []
    for line in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda word: pytest.fail(f"bare {word}"))
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    assert (rows["status"] == "error").all() and (rows["age"] == "").all() and (rows["spread"] == "").all()


def test_eval_of_a_model_giving_nan_is_refused_naming_the_checkpoint(world, tmp_path):
    r = age_main("eval", world["nan_weights"], "--data", world["prep"], "--split", "all", "--device", "cpu",
                 "--out", tmp_path / "e")
    assert_one_line_error(r, str(world["nan_weights"]), "non-finite")
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_server_answers_an_error_for_a_nan_age(world):
    from fastapi.testclient import TestClient

    from agecli.predict.predictor import Predictor
    from agecli.serve.app import create_app
    from agecli.serve.service import ModelService

    client = TestClient(create_app(ModelService(Predictor(world["nan_weights"], detector="none"))))
    data = world["photo"].read_bytes()
    response = client.post("/v1/predict", files={"image": ("p0.png", data, "image/png")})
    assert response.status_code >= 400, response.text
    assert list(response.json()) == ["error"] and "non-finite age" in response.json()["error"]


def test_page_shows_a_missing_age_without_throwing():
    script = (Path(__file__).resolve().parents[1] / "agecli" / "serve" / "static" / "app.js").read_text()
    assert "face.age.toFixed" not in script and "face.spread.toFixed" not in script  # null would throw there


def test_json_writer_refuses_nan_naming_where(tmp_path):
    with pytest.raises(AgeCliError, match=r"metrics\.mae"):
        write_json_atomic(tmp_path / "m.json", {"metrics": {"mae": math.nan}})
    with pytest.raises(AgeCliError, match=r"ages\[1\]"):
        write_json_atomic(tmp_path / "m.json", {"ages": [1.0, np.float32("inf")]})
    assert not (tmp_path / "m.json").exists()


# ---- 5. CSV cells never run as formulas ----------------------------------------------------------------


def test_photo_names_that_look_like_formulas_stay_text_in_predictions_csv(world, tmp_path):
    names = ["=1+2.png", "+1.png", "-1.png", "@SUM(1).png"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(names):
        synthetic_face(folder / name, 30, seed=i)
    r = age_main("predict", "--model", world["tiny"], "--detector", "none", "--out", tmp_path / "o", "--", *names,
                 cwd=folder)  # named as given, so the path cell starts with = + - @
    assert r.returncode == 0, r.stderr
    rows = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    assert sorted(rows["path"]) == sorted(f"'{name}" for name in names)
    for cell in rows.to_numpy().ravel():
        assert not cell.startswith(("=", "+", "@")) and (not cell.startswith("-") or _is_number(cell)), cell


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_csv_writer_neutralises_text_and_keeps_numbers(tmp_path):
    write_csv_atomic(tmp_path / "t.csv", [{"path": "=HYPERLINK(1)", "age": -3.5, "note": "\tx"},
                                          {"path": "-2", "age": 4, "note": "plain"}], ["path", "age", "note"])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["path,age,note", "'=HYPERLINK(1),-3.5,'\tx",
                                                             "'-2,4,plain"]
    assert spreadsheet_safe(-1) == -1 and spreadsheet_safe(None) is None and spreadsheet_safe("@a") == "'@a"


# ---- 6. one name for the spread ------------------------------------------------------------------------


def test_predict_calls_the_spread_spread(world, tmp_path):
    r = predict(world, world["photo"], "--out", tmp_path / "o", model="dist")
    assert r.returncode == 0, r.stderr
    face = strict(tmp_path / "o" / "predictions.json")["photos"][0]["faces"][0]
    assert "std" not in face and face["spread"] > 0
    columns = pd.read_csv(tmp_path / "o" / "predictions.csv").columns
    assert "spread" in columns and "std" not in columns


def test_resume_accepts_records_an_older_agecli_wrote_with_std(world, tmp_path):
    out = tmp_path / "o"
    assert predict(world, world["photos"], "--out", out, model="dist").returncode == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("".join(line.replace('"spread"', '"std"') + "\n" for line in lines[:2]))
    (out / "predictions.csv").write_text(",".join(older_header(CSV_COLUMNS)) + "\n")
    meta = json.loads((out / "predictions.meta.json").read_text())
    (out / "predictions.meta.json").write_text(json.dumps({**meta, "finished": False}))
    r = predict(world, world["photos"], "--out", out, "--resume", model="dist")
    assert r.returncode == 0, r.stderr
    rows = pd.read_csv(out / "predictions.csv")
    assert len(rows) == N_PHOTOS and rows["spread"].notna().all()
    assert all("spread" in p["faces"][0] for p in strict(out / "predictions.json")["photos"])


# ---- 7. edited run files are one line, never a traceback -----------------------------------------------


EDITS = {
    "not json": lambda p: p.write_text("not json at all\n"),
    "a list": lambda p: p.write_text("[1, 2]\n"),
    "no faces": lambda p: p.write_text('{"path": "x", "status": "ok"}\n'),
    "not utf-8": lambda p: p.write_bytes(b'{"path": "\xff\xfe", "faces": []}\n'),
    "face missing fields": lambda p: p.write_text('{"path": "x", "status": "ok", "faces": [{"age": 3}]}\n'),
    "missing": lambda p: p.unlink(),
    "a folder": lambda p: (p.unlink(), p.mkdir()),
}


def _finished_run(world, out: Path, *args) -> Path:
    r = predict(world, world["photos"], "--out", out, *args)
    assert r.returncode == 0, r.stderr
    return out / "predictions.jsonl"


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
    """A finished run and the two finished shards of the same job, made once; tests edit copies."""
    root = tmp_path_factory.mktemp("finished")
    _finished_run(world, root / "whole")
    for i in (1, 2):
        _finished_run(world, root / f"s{i}", "--shard", f"{i}/2")
    return root


@pytest.mark.parametrize("edit", list(EDITS))
def test_resume_on_an_edited_predictions_jsonl_is_one_line(world, finished, tmp_path, edit):
    out = Path(shutil.copytree(finished / "whole", tmp_path / "o"))
    meta = json.loads((out / "predictions.meta.json").read_text())
    (out / "predictions.meta.json").write_text(json.dumps({**meta, "finished": False}))
    EDITS[edit](out / "predictions.jsonl")
    r = predict(world, world["photos"], "--out", out, "--resume")
    assert_one_line_error(r, "predictions.jsonl")


@pytest.mark.parametrize("edit", list(EDITS))
def test_merge_of_an_edited_shard_is_one_line(finished, tmp_path, edit):
    shards = [Path(shutil.copytree(finished / f"s{i}", tmp_path / f"s{i}")) for i in (1, 2)]
    EDITS[edit](shards[1] / "predictions.jsonl")
    r = age_main("predict", "--merge", *shards, "--out", tmp_path / "m")
    assert_one_line_error(r, "predictions.jsonl")


@pytest.mark.parametrize("extra, needle", [(["--shard", "1/2"], "--shard"), (["--resume"], "--resume")])
def test_merge_refuses_shard_and_resume(world, tmp_path, extra, needle):
    shards = [tmp_path / f"s{i}" for i in (1, 2)]
    r = age_main("predict", "--merge", *shards, "--out", tmp_path / "m", *extra)
    assert_one_line_error(r, "--merge", needle)


# ---- 8. unhelpful exceptions get words ------------------------------------------------------------------


MEMORY_WORDS = "not enough memory to decode this image (too many pixels for this machine)"


@pytest.mark.parametrize("err, words", [(MemoryError(), MEMORY_WORDS),
                                        (StopIteration(), "the image has no frames"),
                                        (ValueError(""), "ValueError (no details)")])
def test_photo_errors_without_a_message_are_readable(err, words):
    message = failed_photo(Path("big.jpg"), err).error
    assert message == f"big.jpg: {words}"



def test_page_survives_a_null_age_and_shows_a_server_error():
    """The page against routed answers (no server): a 200 whose age is null, then a 500 for a NaN age."""
    from tests.browser import chromium_page

    static = Path(__file__).resolve().parents[1] / "agecli" / "serve" / "static"
    null_face = {"box": [0, 0, 80, 80], "score": None, "age": None, "spread": None}
    answers = [{"status": 200, "body": {"model": "m", "image": {"width": 80, "height": 80}, "message": None,
                                        "faces": [null_face]}},
               {"status": 500, "body": {"error": "upload: the model gave a non-finite age (nan) for face 1"}}]

    def serve(route):
        path = route.request.url.split("agecli.test", 1)[1]
        if path == "/v1/predict":
            answer = answers.pop(0)
            route.fulfill(status=answer["status"], json=answer["body"])
        elif path == "/v1/model":
            route.fulfill(json={"name": "m", "architecture": "a", "backend": "pytorch", "detector": "none",
                                "metrics": {}, "trained_on": "", "licence": "x"})
        else:
            name = {"/": "index.html"}.get(path, path.rsplit("/", 1)[-1])
            route.fulfill(path=str(static / name))

    with chromium_page() as (page, console_errors):
        page.route("http://agecli.test/**", serve)
        page.goto("http://agecli.test/")
        for name in ("null.png", "nan.png"):
            page.set_input_files("#files", files=[{"name": name, "mimeType": "image/png", "buffer": b"x"}])
        page.wait_for_selector("figure.photo.failed figcaption", timeout=20_000)
        page.wait_for_selector("figure.photo[data-done]", timeout=20_000)
        failure = page.locator("figure.photo.failed figcaption").inner_text()
        assert [e for e in console_errors if not e.startswith("Failed to load resource")] == []  # no script error
    assert failure == "nan.png: upload: the model gave a non-finite age (nan) for face 1"


def test_json_option_refuses_a_non_finite_number_in_one_line(tmp_path):
    from agecli.cli.common import emit_json

    with pytest.raises(AgeCliError, match=r"--json .*summary\.mae is not a finite number"):
        emit_json({"summary": {"mae": float("nan")}}, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_eval_takes_a_shipped_model_by_its_name(world, tmp_path, monkeypatch):
    from agecli.modelio import builtin
    from agecli.training.evaluation import eval_label, run_eval

    shipped = tmp_path / "weights"
    shipped.mkdir()
    (shipped / "tiny.pt").write_bytes(world["tiny"].read_bytes())
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", shipped)
    monkeypatch.chdir(tmp_path)
    result = run_eval("tiny", world["prep"], split="all", device="cpu")
    assert result["metrics"]["n"] == 8 and result["out_dir"] == Path("runs/eval/tiny")
    assert eval_label(Path("runs/train/exp/best.pt")) == "exp"
