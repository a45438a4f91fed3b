import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from agecli.data.scan import ROW_KEYS, SourceScan
from agecli.data.sources import DETECT_BY_DEFAULT, SOURCES, scan_source
from agecli.errors import AgeCliError


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")  # readers never decode, so any bytes will do


def _real(shared_dir: Path, name: str) -> Path:
    folder = shared_dir / "data" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


def _by_name(scan: SourceScan) -> dict:
    return {Path(r["path"]).name: r for r in scan.rows}


# ---------------------------------------------------------------- dispatch


def test_registry_and_errors(tmp_path):
    assert set(SOURCES) == set(DETECT_BY_DEFAULT) == {"utkface", "fgnet", "megaage", "morph", "imdb", "wiki", "csv"}
    assert [k for k, v in DETECT_BY_DEFAULT.items() if v] == ["morph", "imdb", "wiki"]
    with pytest.raises(AgeCliError, match=r"unknown source 'nope' \(valid: csv, fgnet, imdb"):
        scan_source("nope", tmp_path)
    with pytest.raises(AgeCliError, match=r"source 'utkface' has no option 'min_score'"):
        scan_source("utkface", tmp_path, min_score=2)
    with pytest.raises(AgeCliError, match=r"missing: no such folder"):
        scan_source("morph", tmp_path / "missing")


# ---------------------------------------------------------------- UTKFace


def test_utkface_names(tmp_path):
    _touch(tmp_path, "25_0_1_20170116174525125.jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg",
           "7_1_3_20170109142408075.jpg", "abc_0_1_20170116174525125.jpg", "30_5_1_20170116174525125.jpg",
           "200_0_1_20170116174525125.jpg", "readme.txt")
    _touch(tmp_path / "part2", "61_0_20170109150557335.jpg.chip.jpg")
    scan = scan_source("utkface", tmp_path)
    rows = _by_name(scan)
    assert set(rows) == {"25_0_1_20170116174525125.jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg",
                         "7_1_3_20170109142408075.jpg", "61_0_20170109150557335.jpg.chip.jpg"}
    assert rows["39_1_20170116174525125.jpg.chip.jpg"]["age"] == 39.0  # race field missing
    assert rows["39_1_20170116174525125.jpg.chip.jpg"]["gender"] == "f"
    assert rows["25_0_1_20170116174525125.jpg.chip.jpg"] == {
        "path": str(tmp_path / "25_0_1_20170116174525125.jpg.chip.jpg"), "age": 25.0, "subject": "",
        "split": "", "source": "utkface", "gender": "m", "box": ""}
    assert [r["path"] for r in scan.rows] == sorted(r["path"] for r in scan.rows)
    problems = {Path(item).name: p for item, p in scan.problems}
    assert set(problems) == {"abc_0_1_20170116174525125.jpg", "30_5_1_20170116174525125.jpg",
                             "200_0_1_20170116174525125.jpg"}
    assert problems["200_0_1_20170116174525125.jpg"] == "age 200 out of range 0-120"


def test_utkface_empty_folder(tmp_path):
    with pytest.raises(AgeCliError, match=r"no UTKFace images found \(expected names like 25_0_1_2017"):
        scan_source("utkface", tmp_path)
    _touch(tmp_path, "junk.jpg")
    with pytest.raises(AgeCliError, match=r"1 skipped, first: .*junk\.jpg: name does not match"):
        scan_source("utkface", tmp_path)


def test_non_utf8_name_is_a_problem(tmp_path):
    _touch(tmp_path, "25_0_1_20170116174525125.jpg.chip.jpg")
    with open(os.path.join(os.fsencode(tmp_path), b"26_0_1_2017011617452512\xff.jpg"), "wb") as f:
        f.write(b"x")
    scan = scan_source("utkface", tmp_path)
    assert len(scan.rows) == 1
    [(item, problem)] = scan.problems
    assert item.endswith("2017011617452512\\xff.jpg") and "not valid UTF-8" in problem
    item.encode("utf-8")


def test_utkface_real_files(shared_dir, tmp_path):
    src = _real(shared_dir, "utkface")
    names = sorted(os.listdir(src))
    raceless = [n for n in names if n.count("_") == 2][:2]
    assert raceless, "the shared set is documented to hold names without the race field"
    for n in names[:5] + raceless:
        os.symlink(src / n, tmp_path / n)
    scan = scan_source("utkface", tmp_path)
    assert len(scan.rows) == len(set(names[:5] + raceless)) and not scan.problems
    for r in scan.rows:
        assert r["age"] == float(Path(r["path"]).name.split("_")[0]) and r["gender"] in "mf"


# ---------------------------------------------------------------- FG-NET


def test_fgnet_layouts(tmp_path):
    _touch(tmp_path / "images", "001A02.JPG", "001A43a.JPG", "002a10.jpg", "points.pts", "1A2.JPG")
    scan = scan_source("fgnet", tmp_path)
    rows = _by_name(scan)
    assert {n: (r["subject"], r["age"]) for n, r in rows.items()} == {
        "001A02.JPG": ("001", 2.0), "001A43a.JPG": ("001", 43.0), "002a10.jpg": ("002", 10.0)}
    assert [Path(i).name for i, _ in scan.problems] == ["1A2.JPG"]
    flat = scan_source("fgnet", tmp_path / "images")  # the folder holding the JPGs works too
    assert [r["path"] for r in flat.rows] == [r["path"] for r in scan.rows]


def test_fgnet_real_files(shared_dir, tmp_path):
    src = _real(shared_dir, "utkface")
    faces = sorted(os.listdir(src))[:3]
    (tmp_path / "images").mkdir()
    for face, name in zip(faces, ["001A02.JPG", "001A43a.JPG", "082A19.JPG"]):
        shutil.copy(src / face, tmp_path / "images" / name)
    scan = scan_source("fgnet", tmp_path)
    assert [(r["subject"], r["age"]) for r in scan.rows] == [("001", 2.0), ("001", 43.0), ("082", 19.0)]


# ---------------------------------------------------------------- MegaAge-Asian


def _megaage(root: Path, src: Path | None, train: dict, test: dict) -> None:
    for split, items in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        for name in items:
            if src is None:
                (root / split / name).write_bytes(b"x")
            else:
                shutil.copy(src, root / split / name)
    (root / "list").mkdir()
    for split, items in (("train", train), ("test", test)):
        (root / "list" / f"{split}_name.txt").write_text("".join(f"{n}\n" for n in items))
        (root / "list" / f"{split}_age.txt").write_text("".join(f"{a}\n" for a in items.values()) + "\n")


def test_megaage_lists(tmp_path):
    _megaage(tmp_path, None, {"1.jpg": "18", "2.jpg": "x", "3.jpg": "200"}, {"1.jpg": "45"})
    (tmp_path / "train" / "3.jpg").unlink()
    (tmp_path / "list" / "test_name.txt").write_text("1.jpg\n9.jpg\n")
    (tmp_path / "list" / "test_age.txt").write_text("45\n30\n")
    scan = scan_source("megaage", tmp_path)
    assert [(r["split"], Path(r["path"]).relative_to(tmp_path).as_posix(), r["age"]) for r in scan.rows] == [
        ("train", "train/1.jpg", 18.0), ("test", "test/1.jpg", 45.0)]
    assert ("train_age.txt:2", "age 'x' is not a number") in scan.problems
    assert ("train_age.txt:3", "age 200 out of range 0-120") in scan.problems
    assert (str(tmp_path / "test" / "9.jpg"), "file not found") in scan.problems


def test_megaage_mismatched_lists(tmp_path):
    _megaage(tmp_path, None, {"1.jpg": "18", "2.jpg": "20"}, {"1.jpg": "45"})
    (tmp_path / "list" / "train_age.txt").write_text("18\n")
    with pytest.raises(AgeCliError, match=r"train_name\.txt has 2 lines but .*train_age\.txt has 1"):
        scan_source("megaage", tmp_path)


def test_megaage_missing_lists(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(AgeCliError, match=r"no MegaAge-Asian images found \(expected list/train_name\.txt"):
        scan_source("megaage", tmp_path)
    _touch(tmp_path / "list", "train_name.txt")
    with pytest.raises(AgeCliError, match=r"train_age\.txt: missing"):
        scan_source("megaage", tmp_path)


def test_megaage_real_files(shared_dir, tmp_path):
    src = _real(shared_dir, "utkface")
    face = src / sorted(os.listdir(src))[0]
    _megaage(tmp_path, face, {"1.jpg": "18", "2.jpg": "33"}, {"1.jpg": "7"})
    scan = scan_source("megaage", tmp_path)
    assert [(r["split"], r["age"]) for r in scan.rows] == [("train", 18.0), ("train", 33.0), ("test", 7.0)]
    assert not scan.problems


# ---------------------------------------------------------------- MORPH


def test_morph_names(tmp_path):
    _touch(tmp_path / "Album2" / "a", "009055_0M54.JPG", "019066_08F70.jpg", "bad_name.JPG")
    scan = scan_source("morph", tmp_path)
    assert [(r["subject"], r["gender"], r["age"], r["source"]) for r in scan.rows] == [
        ("009055", "m", 54.0, "morph"), ("019066", "f", 70.0, "morph")]
    assert len(scan.problems) == 1 and scan.problems[0][0].endswith("bad_name.JPG")


def test_morph_real_files(shared_dir):
    src = _real(shared_dir, "morph")
    scan = scan_source("morph", src)
    assert len(scan.rows) == len([n for n in os.listdir(src) if n.upper().endswith(".JPG")])
    row = _by_name(scan).get("009055_0M54.JPG")
    assert row is None or (row["subject"], row["gender"], row["age"]) == ("009055", "m", 54.0)
    assert all(30 <= r["age"] <= 70 for r in scan.rows)


# ---------------------------------------------------------------- IMDB-WIKI


def _datenum(y, m, d):
    return dt.date(y, m, d).toordinal() + 366.0


def _write_mat(root: Path, name: str, entries: list[dict]) -> None:
    """A 1x1 struct whose fields are 1xN arrays, laid out like the real imdb.mat / wiki.mat."""
    def row(key, dtype=float):
        return np.array([[e[key] for e in entries]], dtype=dtype)
    paths = np.empty((1, len(entries)), dtype=object)
    locs = np.empty((1, len(entries)), dtype=object)
    names = np.empty((1, len(entries)), dtype=object)
    for i, e in enumerate(entries):
        paths[0, i], locs[0, i], names[0, i] = e["path"], np.array([e.get("loc", [11.0, 21.0, 60.0, 90.0])]), "x"
    meta = {"dob": row("dob"), "photo_taken": row("taken", np.uint16), "full_path": paths, "gender": row("gender"),
            "name": names, "face_location": locs, "face_score": row("score"), "second_face_score": row("second")}
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / f"{name}.mat", {name: meta})
    for e in entries:
        if e.get("exists", True):
            _touch(root / Path(e["path"]).parent, Path(e["path"]).name)


def _entry(path, born=(1980, 3, 15), taken=2010, score=3.0, second=np.nan, gender=1.0, **kw):
    return dict(path=path, dob=_datenum(*born) if born else np.nan, taken=taken, score=score, second=second,
                gender=gender, **kw)


@pytest.mark.parametrize("name", ["imdb", "wiki"])
def test_imdb_wiki_mat(tmp_path, name):
    root = tmp_path / name
    _write_mat(root, name, [
        _entry("01/a.jpg"),  # 30 on July 1 2010
        _entry("01/b.jpg", born=(1980, 9, 15), gender=0.0, loc=[1.0, 1.0, 40.5, 50.0]),  # 29: birthday after July 1
        _entry("02/c.jpg", born=(1980, 7, 1), gender=np.nan),  # 30: birthday on the reference day
        _entry("02/noface.jpg", score=-np.inf),
        _entry("02/nanscore.jpg", score=np.nan),
        _entry("02/weak.jpg", score=0.5),
        _entry("02/two.jpg", second=2.1),
        _entry("02/nodob.jpg", born=None),
        _entry("02/old.jpg", born=(1850, 1, 1)),
        _entry("02/unborn.jpg", born=(2015, 1, 1)),
        _entry("03/gone.jpg", exists=False),
    ])
    scan = scan_source(name, root)
    rows = _by_name(scan)
    assert {n: (r["age"], r["gender"]) for n, r in rows.items()} == {
        "a.jpg": (30.0, "m"), "b.jpg": (29.0, "f"), "c.jpg": (30.0, "")}
    assert rows["a.jpg"]["box"] == "10 20 60 90" and rows["b.jpg"]["box"] == "0 0 40 50"
    assert rows["a.jpg"]["source"] == name and rows["a.jpg"]["path"] == str(root / "01" / "a.jpg")
    assert scan.problems == [
        (f"{name}.mat", "3 rows dropped: face_score below 1 (no face or weak detection)"),
        (f"{name}.mat", "1 rows dropped: a second face in the photo"),
        (f"{name}.mat", "1 rows dropped: unknown date of birth or photo year"),
        (f"{name}.mat", "2 rows dropped: age out of range 0-100"),
        (f"{name}.mat", f"1 rows dropped: file not found (first: {root / '03' / 'gone.jpg'})"),
    ]


def test_imdb_crop_folder_has_no_boxes(tmp_path):
    root = tmp_path / "wiki_crop"
    _write_mat(root, "wiki", [_entry("00/a.jpg")])
    assert scan_source("wiki", root).rows[0]["box"] == ""  # face_location is relative to the uncropped photo
    assert scan_source("wiki", root, boxes=True).rows[0]["box"] == "10 20 60 90"
    with pytest.raises(AgeCliError, match=r"no imdb\.mat found"):
        scan_source("imdb", root)


def test_mat_with_wrong_struct(tmp_path):
    _write_mat(tmp_path, "wiki", [_entry("00/a.jpg")])
    (tmp_path / "wiki.mat").rename(tmp_path / "imdb.mat")
    with pytest.raises(AgeCliError, match=r"imdb\.mat: no 'imdb' struct inside \(found: wiki\)"):
        scan_source("imdb", tmp_path)


# ---------------------------------------------------------------- CSV


def test_csv_rows_and_problems(tmp_path):
    _touch(tmp_path / "img", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg")
    (tmp_path / "labels.csv").write_text(
        "Filename,age,subject,split\n"
        "img/a.jpg,31.5,s1,train\n"  # line 2
        ",20,,\n"  # 3: missing filename
        "img/b.jpg,nan,,\n"  # 4
        "img/c.jpg,-3,,\n"  # 5
        "img/d.jpg,500,,\n"  # 6
        "img/a.jpg,40,,\n"  # 7: duplicate
        "img/e.jpg,abc,,\n"  # 8
        "img/f.jpg,20,,holdout\n"  # 9
        "img/missing.jpg,20,,\n"  # 10
        "img/g.jpg,0,,TEST\n"  # 11
    )
    scan = scan_source("csv", tmp_path)
    assert scan.rows == [
        {"path": str(tmp_path / "img" / "a.jpg"), "age": 31.5, "subject": "s1", "split": "train", "source": "csv",
         "gender": "", "box": ""},
        {"path": str(tmp_path / "img" / "g.jpg"), "age": 0.0, "subject": "", "split": "test", "source": "csv",
         "gender": "", "box": ""},
    ]
    assert all(list(r) == ROW_KEYS for r in scan.rows)
    problems = dict(scan.problems)
    assert problems == {
        "labels.csv:3": "missing filename",
        "labels.csv:4": "age is NaN",
        "labels.csv:5": "age -3 out of range 0-120",
        "labels.csv:6": "age 500 out of range 0-120",
        "labels.csv:7": "duplicate of line 2 (img/a.jpg); keeping the first",
        "labels.csv:8": "age 'abc' is not a number",
        "labels.csv:9": "unknown split 'holdout' (expected train, val, test or empty)",
        "labels.csv:10": "file not found: img/missing.jpg",
    }


def test_csv_root_rules_and_columns(tmp_path):
    _touch(tmp_path, "a.jpg")
    (tmp_path / "one.csv").write_text("path,age\na.jpg,20\n")  # 'path' is a synonym of filename
    assert len(scan_source("csv", tmp_path).rows) == 1  # the only .csv in the folder
    assert len(scan_source("csv", tmp_path / "one.csv").rows) == 1  # or the file itself
    (tmp_path / "two.csv").write_text("filename,years\na.jpg,20\n")
    with pytest.raises(AgeCliError, match=r"need labels\.csv or exactly one \.csv file \(found: one\.csv, two\.csv\)"):
        scan_source("csv", tmp_path)
    with pytest.raises(AgeCliError, match=r"two\.csv: missing column 'age' \(found: filename, years\)$"):
        scan_source("csv", tmp_path / "two.csv")
    (tmp_path / "three.csv").write_text("filename,age\nnope.jpg,20\n")
    with pytest.raises(AgeCliError, match=r"three\.csv: no usable rows found; 1 skipped, first: three\.csv:2: file"):
        scan_source("csv", tmp_path / "three.csv")
