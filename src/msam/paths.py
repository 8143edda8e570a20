"""Where msam's data files are: its config tree (conf/, the one source of every default) and the
paper's published numbers (results/paper/*.csv, beside which the reports put yours).

Imported by every tool and by the library (RW-SAM's and the sharpness tool's defaults), so it
imports nothing of msam's. A built wheel (or an install from the sdist) carries both inside the
package, as `msam/conf` and `msam/paper` (pyproject.toml maps them); an editable install or a
checkout reads the repository's own top-level folders.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parents[1]  # src/msam/../..


def installed_or_checkout(packaged: str, *in_checkout: str) -> Path:
    inside = PACKAGE_DIR / packaged
    return inside if inside.is_dir() else CHECKOUT_DIR.joinpath(*in_checkout)


CONF_DIR = installed_or_checkout("conf", "conf")
PAPER_DIR = installed_or_checkout("paper", "results", "paper")
# msam runs from a repository checkout (an editable install), not from an installed wheel
FROM_CHECKOUT = CONF_DIR == CHECKOUT_DIR / "conf"
