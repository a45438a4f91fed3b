"""`age prepare`: read a dataset as downloaded into a manifest and a cache of face crops."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import deprecated, err_console, note_deprecated, option
from agecli.errors import AgeCliError
from agecli.report.progress import markup_text, progress_bar


def prepare(
    dataset: Annotated[str, typer.Argument(help="utkface, fgnet, megaage, morph, imdb, wiki or csv.")],
    root: Annotated[Path, option("--root")],
    out: Annotated[Optional[Path], option("--out", default="prepared/DATASET")] = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Crop sizes to cache, comma-separated (64 for SSR-Net, 256 for ResNet).")] = "64",
    detector: Annotated[Optional[str], option("--detector", default="default for morph, imdb, wiki; none for the others")] = None,
    align: Annotated[str, typer.Option("--align", help="none: a square around the face box; five_point: the face turned upright on its five landmarks (retinaface or yunet; chips are aligned on landmarks found in the chip).")] = "none",
    margin: Annotated[Optional[float], typer.Option("--margin", help="Crop margin around a detected face, as a share of its size. \\[default: agecli.data.preprocess.DEFAULT_MARGIN]")] = None,
    test_fraction: Annotated[Optional[float], typer.Option("--test-fraction", help="Seeded test share for datasets without a split (by subject when known). \\[default: 0.2; 0 for fgnet]")] = None,
    seed: Annotated[int, option("--seed")] = 0,
    detect: Annotated[Optional[bool], deprecated("--detect/--no-detect", "--detector NAME or --detector none")] = None,
) -> None:
    """Read a dataset in its own layout; write a manifest and a cache of face crops that training reads.

    Writes manifest.csv, report.csv, prepare.json and crops_SIZE.npy into --out; a rerun resumes.
    """
    from agecli.data.prepare import prepare as run_prepare  # imports OpenCV and pandas

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise AgeCliError(f"--sizes {sizes}: expected integers like 64,256") from None
    detect, detector_name = detection(detect, detector)
    with progress_bar(err_console, transient=True) as bar:
        task = bar.add_task(f"prepare {markup_text(dataset)}", total=None, info="")
        result = run_prepare(dataset, root, out, sizes=tuple(size_list), detect=detect, detector=detector_name,
                             margin=margin, test_fraction=test_fraction, seed=seed, align=align,
                             on_progress=lambda done, total: bar.update(task, completed=done, total=total))
    if result.resumed_from:
        err_console.print(f"resumed after {result.resumed_from} images already done")
    splits = ", ".join(f"{k or '(none)'} {v}" for k, v in result.meta["splits"].items())
    err_console.print(f"kept [bold]{result.kept}[/] faces ({splits}); "
                      f"[{'yellow' if result.problems else 'green'}]{len(result.problems)} left out[/]")
    for item, problem in result.problems[:5]:
        err_console.print(f"  {markup_text(item)}: {markup_text(problem)}")
    if len(result.problems) > 5:
        err_console.print(f"  ... {len(result.problems) - 5} more")
    if result.align_fallbacks:
        err_console.print(f"{result.align_fallbacks} faces had no landmarks and were cut unaligned (prepare.json)")
    err_console.print(f"Results saved to [bold]{markup_text(result.out)}[/] (manifest.csv, report.csv, prepare.json)")


def detection(detect: bool | None, detector: str | None) -> tuple[bool | None, str]:
    """(detect, detector name) for the library: None leaves it to the dataset; --detector NAME turns it on,
    --detector none off. The old --detect/--no-detect switch still decides when given."""
    if detect is not None:
        note_deprecated("--detect" if detect else "--no-detect",
                        "--detector default" if detect else "--detector none")
        if detect and detector == "none":
            raise AgeCliError("--detect --detector none: contradict each other; give only --detector")
        return detect, detector if detector not in (None, "none") else "default"
    if detector is None:
        return None, "default"
    if detector == "none":
        return False, "default"
    return True, detector
