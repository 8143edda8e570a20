"""msam-report: the paper's tables and figures from your run directories.

    msam-report table=tab2 runs=runs/ out=results/      (tab2, tab3, tab4, tab5, fig1, figB1, rwsam, or all)
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from msam.report.collect import collect_runs
from msam.report.render import show, write_report
from msam.report.tables import REPORTS

DEFAULTS = {"table": "tab2", "runs": "runs", "out": "results"}


def parse(argv: list[str]):
    unknown = [a for a in argv if a.split("=", 1)[0] not in DEFAULTS or "=" not in a]
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r}; use {' '.join(f'{k}=...' for k in DEFAULTS)}")
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(argv))
    names = list(REPORTS) if cfg.table == "all" else str(cfg.table).split(",")
    bad = [n for n in names if n not in REPORTS]
    if bad:
        raise ValueError(f"unknown table '{bad[0]}'; valid: {', '.join(REPORTS)}, all")
    return names, Path(cfg.runs), Path(cfg.out)


def main(argv: list[str] | None = None) -> int:
    try:
        names, runs_dir, out_dir = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"msam-report: error: {error}", file=sys.stderr)
        return 2
    runs, skipped = collect_runs(runs_dir)
    console = Console(width=max(Console().width, 140))  # piped output would wrap at 80 columns
    for note in skipped:
        console.print(f"skipped {note}", highlight=False)
    if runs.empty:
        print(f"msam-report: error: no finished runs under {runs_dir}", file=sys.stderr)
        return 2
    for name in names:
        report = REPORTS[name](runs)
        show(report, console)
        paths = write_report(report, out_dir)
        console.print(f"  wrote {', '.join(str(p) for p in paths)}\n", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
