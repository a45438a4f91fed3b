"""What reaches the terminal: paths are shown as written, never read as rich markup or terminal escapes."""

from __future__ import annotations

import pytest
from PIL import Image

from agecli.report.progress import markup_text, terminal_text
from tests.helpers import age_main, assert_one_line_error, noise, tiny_checkpoint


def test_terminal_text_makes_control_characters_visible():
    assert terminal_text("a\x1b[31mb\tc\x7f") == "a\\x1b[31mb\\x09c\\x7f"
    assert terminal_text(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    assert markup_text("x[/]y [bold]z") == "x\\[/]y \\[bold]z"


@pytest.mark.parametrize("name", ["a[/]b.png", "[bold]x.png", "[red]y[/red].png"])
def test_bracketed_photo_names_and_out_folders_are_shown_as_written(tmp_path, name):
    tiny = tiny_checkpoint(tmp_path / "tiny.pt")
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)  # a "/" inside the brackets is a folder
    Image.fromarray(noise(64, 64)).save(tmp_path / name)
    out = tmp_path / "out[/]"
    done = age_main("predict", tmp_path / name, "--model", tiny, "--detector", "none", "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    shown = (done.stdout + done.stderr).replace("\n", "")
    assert name.rpartition("/")[2] in shown and "out[/]" in shown
    assert (out / "predictions.json").is_file()


def test_an_escape_byte_in_a_file_name_never_reaches_the_terminal(tmp_path):
    tiny = tiny_checkpoint(tmp_path / "tiny.pt")
    name = "evil\x1b[31m.png"
    Image.fromarray(noise(64, 64)).save(tmp_path / name)
    done = age_main("predict", tmp_path / name, "--model", tiny, "--detector", "none", "--out", tmp_path / "o")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr
    assert "evil\\x1b[31m.png" in (done.stdout + done.stderr).replace("\n", "")
    missing = age_main("predict", tmp_path / "gone\x1b[2J.png", "--model", tiny, "--out", tmp_path / "o2")
    assert missing.returncode == 1 and "\x1b" not in missing.stdout + missing.stderr
    assert "gone\\x1b[2J.png" in (missing.stdout + missing.stderr).replace("\n", "")
    bad_model = age_main("predict", tmp_path / name, "--model", tmp_path / "no\x1b[2J.pt")
    assert "\x1b" not in bad_model.stderr
    assert_one_line_error(bad_model, "no\\x1b[2J.pt")
