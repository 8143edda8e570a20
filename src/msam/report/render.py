"""Write a Report as markdown, CSV, LaTeX (and PNG), and show it in the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from msam import runs as run_files


def markdown(report) -> str:
    frame = report.display
    lines = [f"## {report.title}", "", "| " + " | ".join(frame.columns) + " |",
             "|" + "|".join(" --- " for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    if report.figure is not None:
        lines += ["", f"![{report.name}]({report.name}.png)"]
    lines += [""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def write_report(report, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        out_dir / f"{report.name}.md": markdown(report).encode(),
        out_dir / f"{report.name}.csv": report.numbers.to_csv(index=False).encode(),
        out_dir / f"{report.name}.tex": report.display.to_latex(index=False, caption=report.title).encode(),
    }
    for path, data in written.items():
        run_files.write_atomic(path, data)
    paths = list(written)
    if report.figure is not None:
        png = out_dir / f"{report.name}.png"
        report.figure.savefig(png, dpi=150)
        paths.append(png)
    return paths


def show(report, console: Console) -> None:
    table = Table(title=report.title)
    for column in report.display.columns:
        table.add_column(str(column), no_wrap=True, justify="left" if column in ("dataset", "model", "method") else "right")
    for row in report.display.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    for note in report.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True, markup=False)  # notes hold measures=[...]
