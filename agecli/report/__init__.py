"""What people would rather see than read: report.html, its figures, and progress bars with an ETA.

run_records.py reads what a run folder holds, thumbnails.py cuts faces from the crop cache, plots.py draws the
figures, page.py fills the Jinja2 template in templates/ with them; progress.py is the Reporter interface
that long work calls and the rich bars the CLI passes in.
"""

from agecli.report.page import REPORT_NAME, build_report, build_report_or_warn

__all__ = ["REPORT_NAME", "build_report", "build_report_or_warn"]
