"""msam-report: the paper-style table of the finished runs under a folder."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from msam.report.collect import collect_runs, mean_std_table

METHOD_ORDER = {"vanilla": 0, "sam": 1, "msam": 2}


def render(table, title: str) -> Table:
    out = Table(title=title)
    for column in ("data set", "model", "method", "m", "rho", "epochs", "test acc (%)", "n", "s / epoch"):
        out.add_column(column, justify="left" if column in ("data set", "model", "method") else "right",
                       no_wrap=True)
    for row in table.itertuples():
        out.add_row(row.dataset, row.model, row.method, str(row.m), f"{row.rho:g}", str(row.epochs),
                    f"{row.acc_mean:.2f} ± {row.acc_std:.2f}", str(row.n), f"{row.seconds_per_epoch:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="msam-report", description=__doc__)
    parser.add_argument("runs", help="folder holding run directories (searched recursively)")
    args = parser.parse_args(argv)
    runs, skipped = collect_runs(args.runs)
    console = Console(width=max(Console().width, 120))  # piped output would wrap at 80 columns
    for note in skipped:
        console.print(f"skipped {note}")
    if runs.empty:
        print(f"msam-report: error: no finished runs under {args.runs}", file=sys.stderr)
        return 2
    table = mean_std_table(runs)
    table = table.sort_values(by=["dataset", "model", "method"], key=lambda c: c.map(lambda v: METHOD_ORDER.get(v, v)),
                              kind="stable")
    console.print(render(table, f"Test accuracy, mean ± std over seeds ({args.runs})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
