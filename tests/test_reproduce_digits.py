"""scripts/reproduce_digits.sh --smoke: every axis of the digits reproduction runs end to end
through msam-train, msam-sharpness and msam-report (one seed, two epochs, a subset of each axis),
so the committed command cannot rot."""

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "reproduce_digits.sh"

# run directory name -> the axis it belongs to (names: dataset_model_method_m_rho[_switch]_seed_hash)
EXPECTED = {
    "m_axis": {"vanilla_m1_rho0_s0", "sam_m1_rho0.05_s0", "msam_m8_rho0.05_s0", "msam_m32_rho0.05_s0",
               "msam_m32_rho0.2_s0"},
    "rwsam": {"rwsam_m1_rho0.05_s0"},
    "switching": {"msam_m8_rho0.05_to_vanilla_at0.5_s0", "vanilla_m1_rho0_to_msam_at0.5_s0"},
}
REPORTS = {"m_axis": ["fig1", "tab4", "tab5", "curves"], "rwsam": ["temperature", "tab4", "curves"],
           "switching": ["figB1", "tab4", "curves"]}


def test_the_smoke_version_runs_every_axis_and_writes_every_report(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "MSAM_BIN": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", str(runs), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for axis, names in EXPECTED.items():
        run_dirs = [p for p in (runs / axis).iterdir() if p.is_dir() and not p.name.startswith("_")]
        found = {p.name.removeprefix("digits_small_cnn_").rsplit("_", 1)[0] for p in run_dirs}
        assert found == names, axis
        # RW-SAM: lambda = 2 under both norm_scale, and lambda = 4 with the exact norms
        assert len(run_dirs) == len(names) + 2 * (axis == "rwsam")
        for run_dir in run_dirs:
            assert (run_dir / "sharpness.json").is_file(), run_dir
        for report in REPORTS[axis]:
            assert (out / axis / f"{report}.md").is_file() and (out / axis / f"{report}.csv").is_file()
    assert (out / "m_axis" / "fig1.png").is_file() and (out / "rwsam" / "temperature.png").is_file()
    assert (out / "switching" / "figB1.png").is_file()

    # the measures beyond lambda_max: on the m axis at rho = 0.05 only (match=), with their reports
    for run_dir in (runs / "m_axis").glob("digits_*"):
        held = set(json.loads((run_dir / "sharpness.json").read_text())["measures"])
        beyond = {"topk", "density", "sharpness", "landscape"}
        assert (beyond <= held) == ("rho0.2" not in run_dir.name), run_dir.name
    for report in ("tab4", "density", "landscape"):
        assert (out / "measures" / f"{report}.md").is_file()
    assert (out / "measures" / "density.png").is_file() and (out / "measures" / "landscape.png").is_file()
    assert "rho0.2" not in (out / "measures" / "tab4.csv").read_text()

    with open(out / "rwsam" / "temperature.csv") as table:
        rows = [row for row in csv.DictReader(table) if row["method"] == "rwsam"]
    assert sorted((row["norm_estimator"], row["norm_scale"], float(row["rw_lambda"])) for row in rows) == [
        ("exact", "relative", 4.0), ("finite_difference", "absolute", 2.0), ("finite_difference", "relative", 2.0)]
    assert all(float(row["lambda_max_mean"]) > 0 and float(row["lambda_max_n"]) == 1 for row in rows)
    log = (out / "wall_time.md").read_text().splitlines()
    trained = sum(len(names) for names in EXPECTED.values()) + 2  # + the second and third RW-SAM runs
    # the estimator's error and the weights' effective sample size, on every RW-SAM run
    norms = list(csv.DictReader(open(out / "rwsam" / "norms.csv")))
    assert sorted({(row["trained_with"], row["norm_scale"], float(row["lambda"])) for row in norms}) == [
        ("exact", "relative", 4.0), ("finite_difference", "absolute", 2.0), ("finite_difference", "relative", 2.0)]
    assert {row["point"] for row in norms} == {"init", "final"}
    assert all(1.0 <= float(row["ess_exact"]) <= float(row["B"]) for row in norms)
    assert (out / "rwsam" / "norms.md").read_text().startswith("# RW-SAM's per-sample gradient norms")
    assert "--smoke" in log[-1] and f"| {trained} |" in log[-1], log[-1]
