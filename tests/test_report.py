"""msam-report averages finished runs over seeds and says which runs it skipped."""

import json

from msam import engine
from msam.report.cli import main
from msam.report.collect import collect_runs, mean_std_table


def test_report_averages_over_seeds_and_skips_unfinished(make_cfg, tmp_path, capsys):
    accuracies = [engine.train(make_cfg("method=vanilla", "epochs=1", f"seed={s}"))["test_acc"] for s in (0, 1)]
    engine.train(make_cfg("method=sam", "epochs=1"))
    unfinished = tmp_path / "runs" / "broken"
    unfinished.mkdir()
    (unfinished / "summary.json").write_text(json.dumps({"status": "running"}))

    runs, skipped = collect_runs(tmp_path / "runs")
    table = mean_std_table(runs)
    vanilla = table[table.method == "vanilla"].iloc[0]
    assert vanilla.n == 2 and abs(vanilla.acc_mean - sum(accuracies) / 2) < 1e-9
    assert table[table.method == "sam"].iloc[0].n == 1
    assert len(skipped) == 1 and "broken" in skipped[0]

    assert main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "vanilla" in out and f"{sum(accuracies) / 2:.2f}" in out and "skipped" in out


def test_report_on_an_empty_folder_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err
