"""report.html: one self-contained page per run of `age train`, `age eval` and `age lopo`.

runs.py reads what a run folder holds, thumbnails.py cuts faces from the crop cache, render.py fills the
Jinja2 template in templates/ with metrics, inlined figures and thumbnails.
"""

from agecli.report.page import REPORT_NAME, build_report, build_report_or_warn

__all__ = ["REPORT_NAME", "build_report", "build_report_or_warn"]
