"""The published numbers in results/paper/*.csv, and matching them to our rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from msam.paths import PAPER_DIR

MATCH_KEYS = ["dataset", "model", "method", "m"]


def load_paper(name: str, paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    frame = pd.read_csv(paper_dir / name)
    return frame.rename(columns={"mean": "paper_mean", "std": "paper_std", "source": "paper_source"})


def with_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our rows with the paper's mean/std beside them where dataset, model, method and m match."""
    columns = MATCH_KEYS + ["paper_mean", "paper_std", "paper_source"]
    merged = ours.merge(paper[columns], on=MATCH_KEYS, how="left")
    merged["difference"] = merged["mean"] - merged["paper_mean"]
    return merged


def missing_rows(ours: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    """Paper rows for a (dataset, model) you ran, with no run of that method and m."""
    ran = set(zip(ours["dataset"], ours["model"]))
    have = set(map(tuple, ours[MATCH_KEYS].astype({"m": int}).values.tolist()))
    notes = []
    for row in paper.itertuples():
        key = (row.dataset, row.model, row.method, int(row.m))
        if (row.dataset, row.model) in ran and key not in have:
            notes.append(f"missing: {row.dataset} {row.model} {row.method} m={row.m} "
                         f"(paper {row.paper_mean:g} ± {row.paper_std:g}, {row.paper_source})")
    return notes
