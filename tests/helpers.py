"""Shared test helpers: run the CLI as a user would, and make small image folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run_age(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """`age ARGS...` in a subprocess, so exit codes and stderr are exactly what a user sees."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "agecli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def age_main(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`age ARGS...` run in this process through the real entry point (agecli.cli.main): the same exit
    status, stdout and stderr as run_age, without starting an interpreter. A traceback lands in stderr.
    `env`: environment variables set for this call only."""
    import contextlib
    import io
    import traceback
    from unittest import mock

    from agecli.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    code = 0
    try:
        sys.argv = ["age", *map(str, args)]
        if cwd is not None:
            os.chdir(cwd)
        with mock.patch.dict(os.environ, env or {}), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def link_utkface(shared: Path, dest: Path, n: int, seed: int = 0) -> list[Path]:
    """Symlink a seeded sample of n real UTKFace crops into dest (never copied into the repo)."""
    names = sorted(os.listdir(shared / "data" / "utkface"))
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    links = []
    for i in rng.choice(len(names), size=n, replace=False):
        link = dest / names[i]
        link.symlink_to(shared / "data" / "utkface" / names[i])
        links.append(link)
    return links


def write_photos(folder: Path, count: int, save, name: str = "p{i:02d}.png") -> Path:
    """A new folder of `count` photos, `save(path, i)` writing the i-th."""
    folder.mkdir(parents=True)
    for i in range(count):
        save(folder / name.format(i=i), i)
    return folder


def synthetic_face(path: Path, age: float, size: int = 80, seed: int = 0) -> None:
    """A small image whose brightness encodes the age, so a model can actually learn something."""
    rng = np.random.default_rng(seed)
    level = int(np.clip(40 + age * 2, 0, 255))
    img = np.clip(rng.normal(level, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)


def labelled_faces(folder: Path, n: int) -> Path:
    """`n` synthetic faces and a labels.csv (filename,age) beside them: a dataset for `age prepare csv`."""
    folder.mkdir(parents=True, exist_ok=True)
    ages = [5 + (i * 7) % 70 for i in range(n)]
    for i, age in enumerate(ages):
        synthetic_face(folder / f"f{i:02d}.png", age, seed=i)
    (folder / "labels.csv").write_text("filename,age\n" + "".join(f"f{i:02d}.png,{a}\n" for i, a in enumerate(ages)))
    return folder


def tiny_checkpoint(path: Path, name: str = "ssrnet", seed: int = 0, **preprocess) -> Path:
    """A randomly initialised model saved as a normal agecli checkpoint (no training, no data);
    `preprocess`: Preprocess fields (a misspelt one is an error)."""
    import torch

    from agecli.data.preprocess import Preprocess
    from agecli.modelio.checkpoint import save_checkpoint
    from agecli.models import create_model

    torch.manual_seed(seed)
    kwargs = {"age_min": 0, "age_max": 100} if name == "ssrnet_dist" else {}
    model = create_model(name, **kwargs).eval()
    save_checkpoint(path, model=model, model_name=name, model_kwargs=kwargs,
                    preprocess=Preprocess(**{"margin": 0.2, "shift": 0.0, **preprocess}))
    return path


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
