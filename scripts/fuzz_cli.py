"""Tally what msam-train does with N random hostile command lines (the property test's domain,
tests/test_cli_property.py, drawn with a seeded random generator instead of Hypothesis so that
every line runs and nothing is shrunk).

    .venv/bin/python scripts/fuzz_cli.py --lines 300 --seed 0

Each line goes through what msam-train runs (Hydra's composition, the input checks, a smoke run)
and ends in one outcome: refused (one line), ran, stopped on non-finite values, skipped (a
smoke run too costly for a CPU), or a traceback (grouped by exception type and the line of msam
that raised it). Exit code 1 if any line ended in a traceback.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import traceback
from pathlib import Path

from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_cli_property import GROUPS, KEYS, NAMES, too_costly  # noqa: E402

from msam import engine  # noqa: E402
from msam.cli import compose_or_fail  # noqa: E402
from msam.config import check_config  # noqa: E402
from msam.errors import ConfigError, RunError  # noqa: E402
from msam.train import CONF_DIR  # noqa: E402

LITERALS = ["0", "-1", "1", "2", "3", "4", "8", "1000000", "1e308", "-1e-9", "nan", "inf", "-inf", "0.5", "-0.5",
            "0.999", "1.0", "true", "false", "null", "''", "[]", "[1,2]", "[-1]", "[3,0,5]", "[1,8,8]", "[3,32,32]",
            "{}", "{a:1}", "[0.5]", "[0.1,0.2,0.3]", "'abc'", "' '", "99999999999999999999", "-1e+300"]


def draw(rng: random.Random) -> list[str]:
    groups = [f"{g}={rng.choice(choices)}" for g, choices in rng.sample(sorted(GROUPS.items()), rng.randint(0, 3))]
    values = [f"{rng.choice(KEYS)}={rng.choice(LITERALS + NAMES)}" for _ in range(rng.randint(1, 3))]
    return ["smoke=on", *groups, *values]


def where(error: BaseException) -> str:
    """The innermost frame inside msam (else the innermost of all) that the error passed."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/msam/" in f.filename and "/tests/" not in f.filename] or frames
    frame = ours[-1]
    return f"{type(error).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.name})"


def outcome(argv: list[str]) -> str:
    try:
        cfg = compose_or_fail(CONF_DIR, "train", argv)
        check_config(cfg)
    except ConfigError as error:
        return "refused, one line" if "\n" not in str(error) else "refused, several lines"
    if too_costly(cfg):
        return "skipped (too costly for a smoke run)"
    with tempfile.TemporaryDirectory() as runs:
        with open_dict(cfg):
            cfg.paths.runs = runs
        try:
            engine.train(cfg)
        except ConfigError:
            return "refused, one line (after data or model were built)"
        except RunError as error:
            return "stopped on non-finite values" if "non-finite" in str(error) else f"RunError: {error}"
    return "ran"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tally, examples = collections.Counter(), {}
    for _ in range(args.lines):
        argv = draw(rng)
        try:
            result = outcome(argv)
        except Exception as error:  # noqa: BLE001 - what we are counting
            result = f"TRACEBACK {where(error)}"
        tally[result] += 1
        examples.setdefault(result, " ".join(argv))
    for result, count in tally.most_common():
        print(f"{count:5d}  {result}\n       e.g. msam-train {examples[result]}")
    tracebacks = sum(c for r, c in tally.items() if r.startswith("TRACEBACK"))
    print(f"\n{args.lines} command lines: {tracebacks} ended in a traceback "
          f"({sum(1 for r in tally if r.startswith('TRACEBACK'))} distinct places)")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
