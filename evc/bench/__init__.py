"""`evc bench`: EVC's throughput, latency and size figures beside their baselines.

Run it as ``evc bench`` (``--quick`` for CI, ``--json`` for scripts, ``--output`` for the
Markdown report); ``docs/BENCHMARKS.md`` says how each figure is measured.
"""

from evc.bench.report import FIGURE_KEYS, FIGURES, Figure, Target, build_report, render_markdown
from evc.bench.runner import FULL, QUICK, Plan, run_bench

__all__ = [
    "FIGURES",
    "FIGURE_KEYS",
    "FULL",
    "QUICK",
    "Figure",
    "Plan",
    "Target",
    "build_report",
    "render_markdown",
    "run_bench",
]
