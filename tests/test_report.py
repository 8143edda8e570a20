"""msam-report on fixture run directories: grouping, the paper beside ours, missing and corrupt runs."""

import json

import pytest

from msam import engine
from msam.report.cli import main
from msam.report.collect import collect_runs
from msam.report.tables import (accuracy_table, accuracy_vs_m, glue_table, runtime_table, rwsam_table,
                                sharpness_table)


def fixture_run(root, name, *, method, m, seed, acc, seconds, dataset="cifar100", model="resnet50",
                lambda_max=None, status="finished"):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    summary = {"status": status, "dataset": dataset, "model": model, "method": method, "m": m,
               "rho": 0.0 if method == "vanilla" else 0.2, "seed": seed, "epochs": 200, "epochs_completed": 200,
               "test_acc": acc, "best_test_acc": acc, "seconds_per_epoch": seconds,
               "seed_group": f"{method}{m}"}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if lambda_max is not None:
        (run_dir / "sharpness.json").write_text(json.dumps({"lambda_max": lambda_max, "trace": 10 * lambda_max}))
    return run_dir


@pytest.fixture
def fixture_runs(tmp_path):
    root = tmp_path / "runs"
    fixture_run(root, "msam_s0", method="msam", m=32, seed=0, acc=83.0, seconds=30.0, lambda_max=2.0)
    fixture_run(root, "msam_s1", method="msam", m=32, seed=1, acc=83.5, seconds=34.0, lambda_max=4.0)
    fixture_run(root, "msam16_s0", method="msam", m=16, seed=0, acc=82.0, seconds=31.0)
    fixture_run(root, "sam_s0", method="sam", m=1, seed=0, acc=81.0, seconds=16.0, lambda_max=5.0)
    fixture_run(root, "running", method="sam", m=1, seed=1, acc=50.0, seconds=16.0, status="running")
    corrupt = fixture_run(root, "corrupt", method="sam", m=1, seed=2, acc=81.0, seconds=16.0)
    (corrupt / "summary.json").write_text('{"status": "finished", "test_')  # a truncated write
    no_config = fixture_run(root, "no_config", method="sam", m=1, seed=3, acc=81.0, seconds=16.0)
    (no_config / "config.yaml").unlink()
    return root


def test_incomplete_and_corrupt_runs_are_named_and_skipped(fixture_runs):
    runs, skipped = collect_runs(fixture_runs)
    assert len(runs) == 4
    reasons = {note.split(":")[0].rsplit("/", 1)[-1]: note for note in skipped}
    assert set(reasons) == {"running", "corrupt", "no_config"}
    assert "not finished" in reasons["running"] and "unreadable summary.json" in reasons["corrupt"]
    assert "config.yaml missing" in reasons["no_config"]


def test_accuracy_table_puts_the_paper_beside_ours_and_lists_missing_rows(fixture_runs):
    report = accuracy_table(collect_runs(fixture_runs)[0])
    msam = report.numbers[(report.numbers.method == "msam") & (report.numbers.m == 32)].iloc[0]
    assert msam["mean"] == pytest.approx(83.25) and msam["n"] == 2
    assert msam["std"] == pytest.approx(0.3535534, rel=1e-6)  # sample std (n - 1)
    assert msam["paper_mean"] == 83.37 and msam["difference"] == pytest.approx(-0.12)
    sam = report.numbers[report.numbers.method == "sam"].iloc[0]
    assert sam["paper_mean"] == 81.49
    m16 = report.numbers[report.numbers.m == 16].iloc[0]
    assert m16["paper_mean"] != m16["paper_mean"]  # NaN: the paper ran m = 32 only
    assert any("missing: cifar100 resnet50 vanilla m=1 (paper 80.68" in note for note in report.notes)
    assert list(report.display["method"]) == ["sam", "msam", "msam"]


def test_rwsam_table_puts_the_poster_beside_ours(tmp_path):
    root = tmp_path / "runs"
    fixture_run(root, "rw0", method="rwsam", m=1, seed=0, acc=83.0, seconds=20.0, model="wrn28_10")
    fixture_run(root, "rw1", method="rwsam", m=1, seed=1, acc=84.0, seconds=20.0, model="wrn28_10")
    fixture_run(root, "sam0", method="sam", m=1, seed=0, acc=83.0, seconds=17.0, model="wrn28_10")
    report = rwsam_table(collect_runs(root)[0])
    rw = report.numbers[report.numbers.method == "rwsam"].iloc[0]
    assert rw["mean"] == pytest.approx(83.5) and rw["paper_mean"] == 83.52 and rw["difference"] == pytest.approx(-0.02)
    assert list(report.display["method"]) == ["sam", "rwsam"]
    assert any("missing: cifar100 wrn28_10 vanilla m=1 (paper 81.55" in note for note in report.notes)


def test_glue_table_reports_mcc_for_cola_and_accuracy_with_f1_for_mrpc(tmp_path):
    root = tmp_path / "runs"
    for seed, (mcc, acc) in enumerate([(60.0, 80.0), (62.0, 82.0)]):
        run = fixture_run(root, f"cola{seed}", method="msam", m=8, seed=seed, acc=acc, seconds=5.0, dataset="cola",
                          model="roberta_base")
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "test_mcc": mcc}))
    run = fixture_run(root, "mrpc0", method="sam", m=1, seed=0, acc=90.0, seconds=5.0, dataset="mrpc",
                      model="roberta_base")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "test_f1": 92.5}))
    fixture_run(root, "c100", method="sam", m=1, seed=0, acc=81.0, seconds=16.0)  # not a GLUE row
    report = glue_table(collect_runs(root)[0])
    cola = report.numbers[report.numbers.dataset == "cola"].iloc[0]
    assert cola["mean"] == pytest.approx(61.0) and cola["paper_mean"] == 64.57  # MCC, not the 81% accuracy
    mrpc = report.numbers[report.numbers.dataset == "mrpc"].iloc[0]
    assert mrpc["mean"] == 90.0 and mrpc["f1_mean"] == 92.5 and mrpc["paper_mean"] == 90.37
    assert list(report.display["metric"]) == ["MCC", "acc (%)"] and len(report.numbers) == 2
    assert any("missing: cola roberta_base vanilla m=1" in note for note in report.notes)


def test_sharpness_table_lists_runs_without_sharpness(fixture_runs):
    report = sharpness_table(collect_runs(fixture_runs)[0])
    msam = report.numbers[report.numbers.m == 32].iloc[0]
    assert msam["mean"] == pytest.approx(3.0) and msam["trace_mean"] == pytest.approx(30.0)
    assert any("no sharpness.json" in n and "msam16_s0" in n for n in report.notes)


def test_runtime_table_gives_ratios_to_sam_on_the_same_setting(fixture_runs):
    report = runtime_table(collect_runs(fixture_runs)[0])
    msam = report.numbers[report.numbers.m == 32].iloc[0]
    assert msam["mean"] == pytest.approx(32.0) and msam["x_sam"] == pytest.approx(2.0)
    assert msam["total"] == pytest.approx(32.0 * 200)
    assert msam["paper_x_sam"] == pytest.approx(16196 / 7440)


def test_runtime_table_keeps_compile_seconds_in_their_own_column(tmp_path):
    root = tmp_path / "runs"
    for seed, compiling in enumerate([40.0, 50.0]):
        run = fixture_run(root, f"msam{seed}", method="msam", m=32, seed=seed, acc=83.0, seconds=17.0)
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "compile_seconds": compiling}))
    fixture_run(root, "sam0", method="sam", m=1, seed=0, acc=81.0, seconds=16.0)
    report = runtime_table(collect_runs(root)[0])
    msam = report.numbers[report.numbers.method == "msam"].iloc[0]
    assert msam["compile"] == pytest.approx(45.0) and msam["x_sam"] == pytest.approx(17.0 / 16.0)
    assert msam["total"] == pytest.approx(17.0 * 200)  # compiling is not in the training seconds
    assert list(report.display["compile (s)"]) == ["—", "45.0"]  # sam, then msam: SAM compiled nothing


def test_accuracy_vs_m_draws_a_figure(fixture_runs):
    report = accuracy_vs_m(collect_runs(fixture_runs)[0])
    assert list(report.numbers["m"]) == [1, 16, 32] and report.figure is not None


def test_cli_writes_markdown_csv_tex_and_png(fixture_runs, tmp_path, capsys, run_cli):
    out = tmp_path / "results"
    assert run_cli(main, "tables=all", f"runs={fixture_runs}", f"out={out}") == 0
    for name in ("tab2", "tab4", "tab5", "fig1"):
        for suffix in ("md", "csv", "tex"):
            assert (out / f"{name}.{suffix}").is_file()
    assert (out / "fig1.png").stat().st_size > 1000
    markdown = (out / "tab2.md").read_text()
    assert "| cifar100 | resnet50 | msam | 32 | 0.2 | 200 | 83.25 ± 0.35 | 2 | 83.37 ± 0.10 | -0.12 |" in markdown
    printed = capsys.readouterr().out
    assert "skipped" in printed and "corrupt" in printed


def test_cli_takes_a_list_of_tables(fixture_runs, tmp_path, run_cli):
    out = tmp_path / "results"
    assert run_cli(main, "tables=[tab2,tab4]", f"runs={fixture_runs}", f"out={out}") == 0
    assert sorted(p.name for p in out.glob("*.md")) == ["tab2.md", "tab4.md"]


@pytest.mark.parametrize("args, message", [
    (["tables=tab9"], "unknown table 'tab9'"),
    (["tables=[tab2,tab9]"], "unknown table 'tab9'"),
    (["tables=tab2,tab4"], "Ambiguous value for argument 'tables=tab2,tab4'"),  # Hydra: a sweep needs -m
    (["tabels=tab2"], "Could not override 'tabels'"),
])
def test_cli_refuses_bad_arguments_in_one_line(args, message, tmp_path, capsys, run_cli):
    assert run_cli(main, *args, f"runs={tmp_path}") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no finished runs under {p}: no run directories (no summary.json)"),
    (lambda p: p / "missing", "runs={p}/missing does not exist"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "runs={p}/file.txt is a file"),
])
def test_report_pointed_at_something_that_holds_no_runs_says_what(make, message, tmp_path, capsys, run_cli):
    assert run_cli(main, f"runs={make(tmp_path)}", f"out={tmp_path}/out") == 2
    err = capsys.readouterr().err
    assert message.format(p=tmp_path) in err and len(err.strip().splitlines()) == 1, err


def test_report_reads_real_runs(make_cfg, tmp_path):
    accuracies = [engine.train(make_cfg("method=vanilla", "epochs=1", f"seed={s}"))["test_acc"] for s in (0, 1)]
    report = accuracy_table(collect_runs(tmp_path / "runs")[0])
    assert report.numbers.iloc[0]["n"] == 2
    assert report.numbers.iloc[0]["mean"] == pytest.approx(sum(accuracies) / 2)


def test_switching_figure_groups_hybrid_runs_by_order_and_percent(fixture_runs, tmp_path):
    from msam.report.tables import switching

    for seed, acc in ((0, 82.0), (1, 82.4)):
        run_dir = fixture_run(fixture_runs, f"hybrid_{seed}", method="msam", m=32, seed=seed, acc=acc, seconds=20.0)
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.update(switch_to="vanilla", switch_fraction=0.2, seed_group="hybrid")
        (run_dir / "summary.json").write_text(json.dumps(summary))
    runs = collect_runs(fixture_runs)[0]
    report = switching(runs)
    row = report.numbers.iloc[0]
    assert (row["label"], row["switch_percent"], row["test_acc_n"]) == ("msam → vanilla", 20.0, 2)
    assert row["test_acc_mean"] == pytest.approx(82.2) and report.figure is not None
    assert any("reference: msam (m=32, ρ=0.2) throughout: 83.25" in note for note in report.notes)
    assert not any("reference: sam" in note for note in report.notes)  # SAM is not switched to or from
    # and the hybrid runs stay out of Table 2
    assert accuracy_table(runs).numbers["n"].sum() == 4


def write_curve(run_dir, epochs_values):
    lines = [json.dumps({"epoch": e, "test_acc": acc, "train_loss": loss, "seconds": 0.1})
             for e, (acc, loss) in enumerate(epochs_values, start=1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_learning_curves_average_each_epoch_over_seeds_and_draw_a_band(tmp_path):
    from msam.report.tables import learning_curves

    root = tmp_path / "runs"
    s0 = fixture_run(root, "msam_s0", method="msam", m=32, seed=0, acc=80.0, seconds=1.0)
    s1 = fixture_run(root, "msam_s1", method="msam", m=32, seed=1, acc=82.0, seconds=1.0)
    sam = fixture_run(root, "sam_s0", method="sam", m=1, seed=0, acc=70.0, seconds=1.0)
    no_curve = fixture_run(root, "sam_s1", method="sam", m=1, seed=1, acc=71.0, seconds=1.0)
    for run_dir, values in ((s0, [(10.0, 2.0), (50.0, 1.0), (80.0, 0.5), (80.0, 0.25)]),
                            (s1, [(20.0, 4.0), (60.0, 3.0), (70.0, 1.5), (82.0, 0.75)]),
                            (sam, [(5.0, 2.0), (30.0, 1.0), (60.0, 0.5), (70.0, 0.2)])):
        write_curve(run_dir, values)
    for summary in root.glob("*/summary.json"):  # 4 epochs, so the quarter points are epochs 1..4
        data = json.loads(summary.read_text())
        summary.write_text(json.dumps({**data, "epochs": 4, "epochs_completed": 4}))
    runs, _ = collect_runs(root)
    report = learning_curves(runs)
    msam = report.numbers[report.numbers["method"] == "msam"].sort_values("epoch")
    assert msam["test_acc_mean"].tolist() == [15.0, 55.0, 75.0, 81.0]
    assert msam["train_loss_mean"].tolist() == [3.0, 2.0, 1.0, 0.5]
    assert msam["test_acc_std"].iloc[0] == pytest.approx(7.0710678, rel=1e-6)  # sample std of 10, 20
    assert msam["n"].tolist() == [2, 2, 2, 2]
    sam_rows = report.numbers[report.numbers["method"] == "sam"]
    assert sam_rows["n"].tolist() == [1, 1, 1, 1] and sam_rows["test_acc_std"].tolist() == [0.0] * 4
    shown = report.display.set_index("configuration")
    assert shown.loc["msam m=32 ρ=0.2", "acc @ ep 2"] == "55.00 ± 7.07"
    assert shown.loc["msam m=32 ρ=0.2", "train loss"] == "0.5000 ± 0.3536"
    assert list(shown.index) == ["sam m=1 ρ=0.2", "msam m=32 ρ=0.2"]  # the methods' usual order
    assert any("sam_s1" in note and "metrics.jsonl" in note for note in report.notes)
    assert report.figure is not None and len(report.figure.axes) == 2


def test_accuracy_vs_m_plots_sharpness_too_one_line_per_rho_with_vanilla_as_reference(fixture_runs):
    fixture_run(fixture_runs, "vanilla_s0", method="vanilla", m=1, seed=0, acc=80.0, seconds=8.0, lambda_max=9.0)
    fixture_run(fixture_runs, "vanilla_other_model", method="vanilla", m=1, seed=0, acc=70.0, seconds=8.0,
                model="wrn28_10")  # a setting with no mSAM runs draws no reference
    report = accuracy_vs_m(collect_runs(fixture_runs)[0])
    rows = report.numbers.set_index(["method", "m"])
    assert rows.loc[("msam", 32), "lambda_max_mean"] == pytest.approx(3.0)  # seeds 2.0 and 4.0
    assert rows.loc[("msam", 32), "trace_mean"] == pytest.approx(30.0)
    assert rows.loc[("msam", 16), "lambda_max_n"] != rows.loc[("msam", 16), "lambda_max_n"]  # never measured: NaN
    assert list(report.numbers["label"]) == ["vanilla", "ρ=0.2", "ρ=0.2", "ρ=0.2"]
    assert list(report.numbers["model"]) == ["resnet50"] * 4
    assert list(report.display["λ_max"]) == ["9.000 ± 0.000", "5.000 ± 0.000", "—", "3.000 ± 1.414"]
    panels = [axis.get_ylabel() for axis in report.figure.axes]
    assert panels == ["test accuracy (%)", "λ_max (top Hessian eigenvalue)", "Hessian trace"]
    assert [line.get_ydata()[0] for line in report.figure.axes[1].get_lines() if line.get_linestyle() == "--"] == [9.0]


def rwsam_run(root, name, *, lam, scale, seed, acc, lambda_max, seed_group=None, estimator=None):
    run_dir = fixture_run(root, name, method="rwsam", m=1, seed=seed, acc=acc, seconds=1.0, lambda_max=lambda_max)
    (run_dir / "config.yaml").write_text(f"method:\n  name: rwsam\n  lambda: {lam}\n  norm_scale: {scale}\n"
                                         + (f"  norm_estimator: {estimator}\n" if estimator else ""))
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "rho": 0.05, "seed_group": seed_group or f"rw{lam}{scale}"}))
    return run_dir


def test_temperature_report_keeps_each_lambda_and_norm_scale_apart(tmp_path):
    from msam.report.tables import learning_curves, temperature

    root = tmp_path / "runs"
    rwsam_run(root, "rw0_s0", lam=0, scale="relative", seed=0, acc=80.0, lambda_max=6.0)
    rwsam_run(root, "rw0_s1", lam=0, scale="relative", seed=1, acc=82.0, lambda_max=8.0)
    # the same seed_group: the report must tell them apart by lambda and norm_scale alone
    rwsam_run(root, "rw2", lam=2, scale="relative", seed=0, acc=84.0, lambda_max=4.0, seed_group="g")
    rwsam_run(root, "rw2_abs", lam=2, scale="absolute", seed=0, acc=85.0, lambda_max=3.0, seed_group="g")
    fixture_run(root, "msam", method="msam", m=8, seed=0, acc=86.0, seconds=1.0, lambda_max=2.0)
    report = temperature(collect_runs(root)[0])
    rw = report.numbers[report.numbers["method"] == "rwsam"]
    assert list(zip(rw["norm_scale"], rw["rw_lambda"])) == [("absolute", 2.0), ("relative", 0.0), ("relative", 2.0)]
    assert list(rw["test_acc_mean"]) == [85.0, 81.0, 84.0] and list(rw["lambda_max_mean"]) == [3.0, 7.0, 4.0]
    assert list(report.display["λ"]) == ["—", "2", "0", "2"]  # the mSAM reference has no lambda
    assert {line.get_label() for line in report.figure.axes[0].get_lines()} >= {"msam m=8 ρ=0.2"}
    write_curve(root / "rw2_abs", [(50.0, 1.0)])
    labels = set(learning_curves(collect_runs(root)[0]).numbers["label"])
    assert "rwsam m=1 ρ=0.05 λ=2 (absolute, finite_difference)" in labels


def test_temperature_report_keeps_the_exact_norms_beside_the_estimate(tmp_path):
    from msam.report.tables import temperature

    root = tmp_path / "runs"
    # one seed_group for all three: norm_estimator alone tells them apart; a config without the
    # key is from before it existed, when the finite-difference probe was the only estimator
    rwsam_run(root, "old", lam=2, scale="relative", seed=0, acc=84.0, lambda_max=4.0, seed_group="g")
    rwsam_run(root, "fd", lam=2, scale="relative", seed=1, acc=86.0, lambda_max=6.0, seed_group="g",
              estimator="finite_difference")
    rwsam_run(root, "exact", lam=2, scale="relative", seed=0, acc=90.0, lambda_max=1.0, seed_group="g",
              estimator="exact")
    report = temperature(collect_runs(root)[0])
    assert list(zip(report.numbers["norm_estimator"], report.numbers["test_acc_mean"])) == [
        ("exact", 90.0), ("finite_difference", 85.0)]
    assert list(report.display["norms"]) == ["exact", "finite difference"]
    assert list(report.numbers["test_acc_n"]) == [1, 2]


def test_accuracy_vs_m_keeps_configurations_that_share_rho_and_m_on_separate_lines(tmp_path):
    root = tmp_path / "runs"
    fixture_run(root, "long", method="msam", m=32, seed=0, acc=83.0, seconds=1.0)
    short = fixture_run(root, "short", method="msam", m=32, seed=0, acc=70.0, seconds=1.0)
    summary = json.loads((short / "summary.json").read_text())
    (short / "summary.json").write_text(json.dumps({**summary, "epochs": 20, "seed_group": "short"}))
    report = accuracy_vs_m(collect_runs(root)[0])  # no run has sharpness.json: one panel, accuracy
    assert sorted(report.numbers["label"]) == ["ρ=0.2, 20 epochs", "ρ=0.2, 200 epochs"]
    assert [axis.get_ylabel() for axis in report.figure.axes] == ["test accuracy (%)"]
    assert list(report.display["n (λ_max)"]) == [0, 0]
