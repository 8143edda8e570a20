"""msam-report on sharpness.json's further measures (topk, density, sharpness, landscape): Table 4's
columns, the density and landscape figures, and the notes naming runs that lack a measure.

Every number below is worked out by hand from the fixture's sharpness.json files."""

import json
import math

import numpy as np
import pytest
from test_report import fixture_run, fixture_runs  # noqa: F401  (fixture_runs: a pytest fixture)

from msam.report.cli import main
from msam.report.collect import collect_runs
from msam.report.shapes import density_curves, landscape_planes, sections
from msam.report.tables import loss_landscape, sharpness_table, spectral_density

SQRT2 = math.sqrt(2)
ALPHA = [-1.0, -0.5, 0.0, 0.5, 1.0]
# seed 0 and seed 1 of one mSAM configuration (m = 32): every section of the schema
SEED0 = {
    "topk": {"k": 3, "eigenvalues": [10.0, 6.0, 2.0], "residuals": [1e-5] * 3, "converged": True},
    "density": {"probes": 2, "lanczos_steps": 2, "sigma": 0.5, "nodes": [[-1.0, 2.0], [0.0, 3.0]],
                "weights": [[0.25, 0.75], [0.5, 0.5]], "grid": [0.0, 1.0], "density": [0.5, 0.5],
                "negative_mass": 0.125},
    "sharpness": {"rho": 0.05, "rows": [
        {"kind": "worst", "scale": "plain", "n": 8, "n_label": "micro", "mean": 0.010, "stderr": 0.001},
        {"kind": "worst", "scale": "adaptive", "n": 256, "n_label": "batch", "mean": 0.020, "stderr": 0.001},
        {"kind": "average", "scale": "plain", "n": 1000, "n_label": "full", "mean": 0.001, "stderr": None}]},
    "landscape": {"span": 1.0, "slices": {
        "random": {"alpha": ALPHA, "loss": [2.0, 1.0, 0.5, 1.2, 3.0]},            # rise 1.5 at -1, 2.5 at +1
        "eigenvector": {"alpha": [-1.0, 0.0, 1.0], "loss": [1.5, 0.5, 0.9], "eigenvalue": 10.0}},
        "plane": {"alpha": [-1.0, 0.0, 1.0], "beta": [-1.0, 0.0, 1.0], "loss": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]},
        "path": {"against": "other", "t": [0.0, 0.5, 1.0], "loss": [0.5, 2.5, 0.7]}},
}
SEED1 = {
    "topk": {"k": 3, "eigenvalues": [12.0, 8.0, 4.0], "residuals": [1e-5] * 3, "converged": True},
    "density": {"probes": 1, "lanczos_steps": 2, "sigma": 1.0, "nodes": [[1.0, 4.0]], "weights": [[0.4, 0.6]],
                "grid": [0.0], "density": [1.0], "negative_mass": 0.0},
    "sharpness": {"rho": 0.05, "rows": [
        {"kind": "worst", "scale": "plain", "n": 8, "n_label": "micro", "mean": 0.014, "stderr": 0.001},
        {"kind": "worst", "scale": "adaptive", "n": 256, "n_label": "batch", "mean": 0.024, "stderr": 0.001},
        {"kind": "average", "scale": "plain", "n": 1000, "n_label": "full", "mean": 0.003, "stderr": None}]},
    "landscape": {"span": 1.0, "slices": {
        "random": {"alpha": ALPHA, "loss": [3.0, 1.0, 1.0, 1.0, 2.5]}},            # rise 2.0 at -1, 1.5 at +1
        "plane": {"alpha": [-1.0, 0.0, 1.0], "beta": [-1.0, 0.0, 1.0], "loss": [[2, 4, 6], [8, 10, 12], [14, 16, 18]]},
        "path": {"against": "other", "t": [0.0, 0.25, 0.5, 0.75, 1.0], "loss": [1.0, 2.0, 3.0, 2.0, 0.9]}},
}


def measured_run(root, name, seed, sections_):
    run_dir = fixture_run(root, name, method="msam", m=32, seed=seed, acc=83.0, seconds=1.0, lambda_max=2.0 + seed)
    data = json.loads((run_dir / "sharpness.json").read_text())
    (run_dir / "sharpness.json").write_text(json.dumps({**data, **sections_}))
    return run_dir


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    measured_run(root, "msam_s0", 0, SEED0)
    measured_run(root, "msam_s1", 1, SEED1)
    fixture_run(root, "sam_s0", method="sam", m=1, seed=0, acc=81.0, seconds=1.0, lambda_max=5.0)  # λ_max only
    fixture_run(root, "msam16_s0", method="msam", m=16, seed=0, acc=82.0, seconds=1.0)  # no sharpness.json
    return root


def normal(t, mean, sigma):
    return math.exp(-0.5 * ((t - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def hand_density(t):
    """The two seeds' densities at t, written out from SEED0 and SEED1 (seed 0 has 2 probes)."""
    seed0 = (0.25 * normal(t, -1, 0.5) + 0.75 * normal(t, 2, 0.5) + 0.5 * normal(t, 0, 0.5)
             + 0.5 * normal(t, 3, 0.5)) / 2
    seed1 = 0.4 * normal(t, 1, 1.0) + 0.6 * normal(t, 4, 1.0)
    return seed0, seed1


def test_tab4_shows_a_column_per_measure_with_mean_and_std_over_seeds(runs_root):
    report = sharpness_table(collect_runs(runs_root)[0])
    msam = report.numbers[report.numbers.m == 32].iloc[0]
    expected = {"lambda_k=3": (3.0, SQRT2), "negative_mass": (0.0625, 0.125 / SQRT2),
                "sharpness:worst@micro": (0.012, 0.004 / SQRT2),
                "sharpness:worst-adaptive@batch": (0.022, 0.004 / SQRT2),
                "sharpness:avg@full": (0.002, 0.002 / SQRT2), "rise_1d": (1.875, 0.25 / SQRT2)}
    for column, (mean, std) in expected.items():
        assert msam[f"{column}_mean"] == pytest.approx(mean) and msam[f"{column}_std"] == pytest.approx(std), column
        assert msam[f"{column}_n"] == 2
    assert list(report.display.columns)[6:] == ["λ_max", "trace", "n", "λ_k (k=3)", "negative mass", "worst@micro",
                                                "worst-adaptive@batch", "avg@full", "1-D rise"]
    shown = report.display.set_index("method")
    assert shown.loc["msam", "λ_k (k=3)"] == "3.000 ± 1.414" and shown.loc["msam", "1-D rise"] == "1.8750 ± 0.1768"
    assert shown.loc["sam", "negative mass"] == "—"  # measured λ_max only
    assert any("m-sharpness radius ρ" in note and "0.05" in note for note in report.notes)


def test_tab4_names_measured_runs_that_lack_a_measure(runs_root):
    notes = sharpness_table(collect_runs(runs_root)[0]).notes
    sam = str(runs_root / "sam_s0")
    for section in ("topk", "sharpness", "landscape"):
        assert (f"no {section} in sharpness.json: 1 run(s): {sam} (run: msam-sharpness run={sam} "
                f"measures=[{section}])") in notes
    assert any("no sharpness.json" in note and "msam16_s0" in note for note in notes)


def test_tab4_gathers_many_runs_lacking_a_measure_in_one_line():
    import pandas as pd

    from msam.report.tables import missing_measures

    runs = pd.DataFrame({"sharpness_measured": [True] * 5 + [None], "run_dir": [f"r{i}" for i in range(6)],
                         "lambda_k=3": [None] * 5 + [1.0]})
    assert missing_measures(runs, ["lambda_k=3"]) == [
        "no topk in sharpness.json: 5 run(s): r0, r1, r2 and 2 more (run: msam-sharpness runs=<their folder> "
        "measures=[topk])"]


def test_tab4_is_unchanged_without_the_new_measures(fixture_runs):  # noqa: F811
    runs = collect_runs(fixture_runs)[0]
    assert runs["negative_mass"].isna().all() and runs["rise_1d"].isna().all()
    report = sharpness_table(runs)
    assert list(report.display.columns) == ["dataset", "model", "method", "m", "rho", "epochs", "λ_max", "trace", "n"]
    assert list(report.numbers.columns[-6:]) == ["mean", "std", "n", "trace_mean", "trace_std", "trace_n"]
    assert not any("sharpness.json:" in n and "measures=" in n for n in report.notes)


def test_density_is_averaged_over_seeds_on_a_common_grid(runs_root):
    report = spectral_density(collect_runs(runs_root)[0])
    (line,) = report.figure.axes[0].get_lines()
    grid, drawn = line.get_xdata(), line.get_ydata()
    measured, found, _ = sections(collect_runs(runs_root)[0], "density")
    (curve,) = density_curves(measured, found)
    for index in (60, 120, 200, 260):
        seed0, seed1 = hand_density(grid[index])
        assert drawn[index] == pytest.approx((seed0 + seed1) / 2, rel=1e-12)
        assert curve["std"][index] == pytest.approx(abs(seed0 - seed1) / SQRT2, rel=1e-12)
    assert grid.min() < -1.0 and grid.max() > 4.0  # the common grid covers both seeds' nodes
    assert line.get_label() == "msam m=32 ρ=0.2" and report.figure.axes[0].get_yscale() == "log"
    row = report.numbers.iloc[0]
    assert (row["mean"], row["n"]) == (pytest.approx(0.0625), 2)
    assert list(report.display.iloc[0]) == ["cifar100", "resnet50", "msam m=32 ρ=0.2", "0.0625 ± 0.0884", 2]


def test_density_and_landscape_name_the_runs_without_them(runs_root):
    runs = collect_runs(runs_root)[0]
    sam, m16 = str(runs_root / "sam_s0"), str(runs_root / "msam16_s0")
    for report, name in ((spectral_density(runs), "density"), (loss_landscape(runs), "landscape")):
        assert f"no {name} in sharpness.json: {sam} (run: msam-sharpness run={sam} measures=[{name}])" in report.notes
        assert f"no sharpness.json: {m16} (run: msam-sharpness run={m16} measures=[{name}])" in report.notes
        assert len(report.numbers) == 1  # the one measured configuration


def test_landscape_rise_at_each_end_and_seed_means_of_the_slices(runs_root):
    report = loss_landscape(collect_runs(runs_root)[0])
    row = report.numbers.iloc[0]
    assert row["random_minus_mean"] == pytest.approx(1.75) and row["random_plus_mean"] == pytest.approx(2.0)
    assert row["random_minus_std"] == pytest.approx(0.5 / SQRT2) and row["random_plus_std"] == pytest.approx(1 / SQRT2)
    assert (row["eigenvector_minus_mean"], row["eigenvector_plus_mean"]) == (pytest.approx(1.0), pytest.approx(0.4))
    assert (row["eigenvector_minus_n"], row["n"]) == (1, 2)
    assert list(report.display.columns) == ["dataset", "model", "configuration", "random: rise at −span",
                                            "random: rise at +span", "eigenvector: rise at −span",
                                            "eigenvector: rise at +span", "n"]
    random, eigenvector, path = (report.figure.axes[i].get_lines()[0] for i in range(3))
    assert list(random.get_ydata()) == pytest.approx([2.5, 1.0, 0.75, 1.1, 2.75])
    assert list(eigenvector.get_ydata()) == pytest.approx([1.5, 0.5, 0.9])  # seed 0 alone
    # seed 1's path has other t: interpolated onto seed 0's (0, 0.5, 1)
    assert list(path.get_xdata()) == [0.0, 0.5, 1.0] and list(path.get_ydata()) == pytest.approx([0.75, 2.75, 0.8])


def test_landscape_plane_is_the_mean_over_seeds_in_a_row_of_contours(runs_root):
    runs = collect_runs(runs_root)[0]
    (plane,), notes = landscape_planes(*sections(runs, "landscape")[:2])
    assert plane["n"] == 2 and not notes
    assert plane["loss"].tolist() == (1.5 * np.arange(1, 10).reshape(3, 3)).tolist()
    figure = loss_landscape(runs).figure
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["cifar100 / resnet50: random direction (filter-normalized)",
                      "cifar100 / resnet50: top eigenvector", "cifar100 / resnet50: linear path",
                      "cifar100 / resnet50: msam m=32 ρ=0.2 (n=2)"]


def test_cli_writes_the_density_and_landscape_figures(runs_root, tmp_path, run_cli):
    out = tmp_path / "results"
    assert run_cli(main, "tables=all", f"runs={runs_root}", f"out={out}") == 0
    for name in ("density", "landscape"):
        for suffix in ("md", "csv", "tex"):
            assert (out / f"{name}.{suffix}").is_file()
        assert (out / f"{name}.png").stat().st_size > 1000
        assert f"![{name}]({name}.png)" in (out / f"{name}.md").read_text()
    assert "| msam m=32 ρ=0.2 | 0.0625 ± 0.0884 | 2 |" in (out / "density.md").read_text()
    assert "negative_mass_mean" in (out / "tab4.csv").read_text().splitlines()[0]


def test_cli_lists_density_and_landscape_among_the_valid_tables(tmp_path, capsys, run_cli):
    assert run_cli(main, "tables=tab9", f"runs={tmp_path}") == 2
    assert "density, landscape, all" in capsys.readouterr().err
