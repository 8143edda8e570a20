"""Tally what msam-train does with N random hostile command lines: the property test's domain
(tests/cli_domain.py) drawn with a seeded random generator instead of Hypothesis, so that every
line runs and nothing is shrunk.

    .venv/bin/python scripts/fuzz_cli.py --lines 300 --seed 0

Each line ends in one outcome: refused (by Hydra's composition or by check_config, one line),
ran, stopped on non-finite values, skipped (accepted but too costly to smoke-run on a CPU), or a
traceback (grouped by exception type and the line of msam that raised it). Exit code 1 if any
line ended in a traceback.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cli_domain import GROUP_CHOICES, HOSTILE, KEYS, VALID, run_line  # noqa: E402


def draw(rng: random.Random) -> list[str]:
    groups = rng.sample(GROUP_CHOICES, rng.randint(0, 3))
    values = []
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(KEYS)
        values.append(f"{key}={rng.choice(VALID[key] if VALID[key] and rng.random() < 0.5 else HOSTILE)}")
    return ["smoke=on", *groups, *values]


def where(error: BaseException) -> str:
    """The innermost frame inside msam (else the innermost of all) that the error passed."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if "/msam/" in f.filename] or frames
    frame = ours[-1]
    return f"{type(error).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.name})"


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
            result = run_line(argv)
        except Exception as error:  # noqa: BLE001 - what we are counting
            result = f"TRACEBACK {where(error)}"
        tally[result] += 1
        examples.setdefault(result, " ".join(argv))
    for result, count in tally.most_common():
        print(f"{count:5d}  {result}\n       e.g. msam-train {examples[result]}")
    tracebacks = sum(c for r, c in tally.items() if r.startswith("TRACEBACK"))
    places = sum(1 for r in tally if r.startswith("TRACEBACK"))
    print(f"\n{args.lines} command lines: {tracebacks} ended in a traceback ({places} distinct places)")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
