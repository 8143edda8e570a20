"""msam-report: the paper's tables and figures from your run directories (a Hydra app over
conf/report.yaml).

    msam-report tables=tab2 runs=runs/ out=results/      (tab2, tab3, tab4, tab5, fig1, figB1, rwsam, temperature,
                                                          curves, density, landscape, or all)
    msam-report tables=[tab2,tab4,tab5] runs=runs/demo   several at once
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from msam.cli import guarded, run_tool
from msam.domains import Int, ListOf, Optional, Text, check_domains
from msam.errors import ConfigError
from msam.report.collect import collect_runs
from msam.report.render import show, write_report
from msam.report.tables import REPORTS
from msam.runs import writable_folder
from msam.paths import CONF_DIR

PROG = "msam-report"


def table_names(tables) -> list[str]:
    names = [str(t) for t in tables] if OmegaConf.is_list(tables) else [str(tables)]
    if names == ["all"]:
        return list(REPORTS)
    bad = [n for n in names if n not in REPORTS]
    if bad or not names:
        raise ConfigError(f"unknown table '{bad[0] if bad else ''}'; valid: {', '.join(REPORTS)}, all (or a list, "
                          "tables=[tab2,tab4])")
    return names


def runs_folder(runs: str) -> Path:
    folder = Path(runs)
    if not folder.exists():
        raise ConfigError(f"runs={runs} does not exist; give the folder your runs were written to (paths.runs)")
    if not folder.is_dir():
        raise ConfigError(f"runs={runs} is a file, not a folder of run directories")
    return folder


def make_reports(cfg: DictConfig) -> None:
    check_domains(cfg, {"": {"runs": Text(), "out": Text(), "console_width": Int(40),
                             "match": Optional(ListOf(Text(), min_length=1))}})
    names = table_names(cfg.tables)
    runs_dir = runs_folder(str(cfg.runs))
    runs, skipped = collect_runs(runs_dir, cfg.get("match"))
    console = Console(width=max(Console().width, cfg.console_width))
    for note in skipped:
        console.print(f"skipped {note}", highlight=False)
    if runs.empty:
        found = "no run directories (no summary.json)" if not skipped else f"{len(skipped)} run directories, none finished"
        raise ConfigError(f"no finished runs under {runs_dir}: {found}")
    out_dir = writable_folder(Path(cfg.out), "out")
    for name in names:
        report = REPORTS[name](runs)
        show(report, console)
        paths = write_report(report, out_dir)
        console.print(f"  wrote {', '.join(str(p) for p in paths)}\n", highlight=False)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="report")
def hydra_main(cfg: DictConfig) -> None:
    guarded(PROG, lambda: make_reports(cfg))


def main() -> None:
    run_tool(PROG, "report", hydra_main)


if __name__ == "__main__":
    main()
