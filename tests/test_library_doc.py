"""The library walk-through in docs/architecture.md runs as written: prepare, train, eval, export and predict
as Python calls, on synthetic faces and the repository's example photo."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import labelled_faces

ROOT = Path(__file__).resolve().parents[1]


def library_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## The library\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_library_path_runs(tmp_path):
    labelled_faces(tmp_path / "faces", 40)
    shutil.copy(ROOT / "examples" / "astronaut.png", tmp_path / "photo.png")
    (tmp_path / "walkthrough.py").write_text(library_block())
    done = subprocess.run([sys.executable, "walkthrough.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"best epoch \d: validation MAE \d+\.\d\d", done.stdout)
    assert re.search(r"test MAE \d+\.\d\d", done.stdout)
    assert (tmp_path / "runs" / "eval" / "mine" / "report.html").is_file()
    assert re.search(r"best\.onnx \d\.\de-\d\d years from PyTorch", done.stdout)
    faces = [line for line in done.stdout.splitlines() if line.startswith("photo.png")]
    builtin, exported = faces  # one face, once per model
    assert " ± " in builtin and " ± " not in exported  # the built-in model has a spread; SSR-Net has none
    assert builtin.split("]")[0] == exported.split("]")[0]  # the same detector found the same box
