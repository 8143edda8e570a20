"""The paper's tables and figures computed from run directories.

Each builder returns a Report: numbers (one row per configuration, numeric columns, written
as CSV), a display table (formatted strings, written as markdown/LaTeX and to the terminal),
notes (missing and skipped runs) and optionally a figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from msam.report.collect import GROUP_KEYS, MEASURES, implementations, mean_std, measures, single_method
from msam.report.curves import CURVE_VALUES, curve_numbers, epoch_rows
from msam.report.figures import against_figure, curves_figure, density_figure, landscape_figure
from msam.report.measures import SHARPNESS_PREFIX, TOPK_PREFIX, sharpness_order
from msam.report.paper import load_paper, missing_rows, with_paper
from msam.report.shapes import (SLICE_KINDS, density_curves, labels, landscape_lines, landscape_planes, rise_rows,
                                sections)

METHOD_ORDER = {"vanilla": 0, "sam": 1, "asam": 2, "rwsam": 3, "msam": 4}


@dataclass
class Report:
    name: str
    title: str
    numbers: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    figure: object | None = None  # a matplotlib Figure


def fmt(mean, std=None, digits=2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def significant(mean, std=None) -> str:
    """mean ± std to 3 and 2 significant digits: for values from 1e-8 to 1 in one column."""
    if mean is None or mean != mean:
        return "—"
    return f"{mean:.3g}" if std is None or std != std else f"{mean:.3g} ± {std:.2g}"


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    order = frame["method"].map(lambda m: METHOD_ORDER.get(m, 9))
    return frame.assign(_order=order).sort_values(["dataset", "model", "_order", "m", "rho"]).drop(columns="_order")


def setting_columns(frame: pd.DataFrame) -> pd.DataFrame:
    columns = frame[["dataset", "model", "method", "m", "rho", "epochs"]].astype({"m": int, "epochs": int})
    return columns.assign(rho=[f"{rho:g}" for rho in columns["rho"]])


def accuracy_against(runs: pd.DataFrame, paper_csv: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Test accuracy, mean ± std over seeds, with a published number and the difference."""
    paper = load_paper(paper_csv)
    numbers = ordered(with_paper(mean_std(single_method(runs), "test_acc"), paper))
    display = setting_columns(numbers).assign(**{
        "test acc (%)": [fmt(r.mean, r.std) for r in numbers.itertuples()],
        "n": numbers["n"].astype(int),
        "paper": [fmt(r.paper_mean, r.paper_std) for r in numbers.itertuples()],
        "ours − paper": [fmt(d) if not math.isnan(d) else "—" for d in numbers["difference"]],
    })
    return numbers, display, missing_rows(numbers, paper)


def accuracy_table(runs: pd.DataFrame) -> Report:
    """Table 2: test accuracy, with the mSAM paper's number beside ours."""
    return Report("tab2", "Table 2: test accuracy (%), mean ± std over seeds", *accuracy_against(runs, "tab2_accuracy.csv"))


def rwsam_table(runs: pd.DataFrame) -> Report:
    """The RW-SAM poster's accuracy tables (SGD, SAM, RW-SAM), with the poster's number beside ours."""
    return Report("rwsam", "RW-SAM poster: test accuracy (%), mean ± std over seeds",
                  *accuracy_against(runs, "rwsam_accuracy.csv"))


GLUE_METRIC = {"cola": "test_mcc"}  # the paper's Table 3: MCC for CoLA, accuracy for the rest


def glue_table(runs: pd.DataFrame) -> Report:
    """Table 3: GLUE dev-set MCC (CoLA) or accuracy, mean ± std over seeds, F1 beside it where
    measured (MRPC, QQP), the paper's number and the difference."""
    paper = load_paper("tab3_glue.csv")
    runs = single_method(runs)
    runs = runs[runs["dataset"].isin(paper["dataset"].unique())]
    runs = runs.assign(score=[row[GLUE_METRIC.get(row["dataset"], "test_acc")] for _, row in runs.iterrows()])
    numbers = with_paper(mean_std(runs, "score"), paper)
    f1 = mean_std(runs, "test_f1").rename(columns={"mean": "f1_mean", "std": "f1_std", "n": "f1_n"})
    numbers = ordered(numbers.merge(f1, on=GROUP_KEYS, how="left"))
    display = setting_columns(numbers).assign(**{
        "metric": ["MCC" if d in GLUE_METRIC else "acc (%)" for d in numbers["dataset"]],
        "dev score": [fmt(r.mean, r.std) for r in numbers.itertuples()],
        "n": numbers["n"].astype(int),
        "F1": [fmt(r.f1_mean, r.f1_std) for r in numbers.itertuples()],
        "paper": [fmt(r.paper_mean, r.paper_std) for r in numbers.itertuples()],
        "ours − paper": [fmt(d) if not math.isnan(d) else "—" for d in numbers["difference"]],
    })
    return Report("tab3", "Table 3: GLUE dev set, RoBERTa-base (MCC x 100 for CoLA, accuracy % otherwise)",
                  numbers, display, missing_rows(numbers, paper))


def extra_measures(runs: pd.DataFrame) -> list[str]:
    """The runs frame's columns of the measures beyond λ_max and the trace that some run holds, in
    Table 4's order: k-th eigenvalue, negative mass, m-sharpness rows, 1-D rise."""
    topk = sorted((c for c in runs.columns if c.startswith(TOPK_PREFIX)), key=lambda c: int(c[len(TOPK_PREFIX):]))
    sharp = sorted((c for c in runs.columns if c.startswith(SHARPNESS_PREFIX)),
                   key=lambda c: sharpness_order(c[len(SHARPNESS_PREFIX):]))
    return [c for c in [*topk, "negative_mass", *sharp, "rise_1d"] if runs[c].notna().any()]


def measure_heading(column: str) -> tuple[str, str, int | None]:
    """A measure column's display heading, the sharpness.json section it comes from (the
    `measures=` entry that writes it) and its digits."""
    if column.startswith(TOPK_PREFIX):
        return f"λ_k (k={column[len(TOPK_PREFIX):]})", "topk", 3
    if column.startswith(SHARPNESS_PREFIX):
        return column[len(SHARPNESS_PREFIX):], "sharpness", None  # None: significant digits (they span decades)
    return {"negative_mass": ("negative mass", "density", 4), "rise_1d": ("1-D rise", "landscape", 4)}[column]


def missing_measures(runs: pd.DataFrame, columns: list[str]) -> list[str]:
    """One note per section that some measured runs (they have sharpness.json) lack: how many, the
    first three by name, and the command that measures them. A measure shown for some runs is never
    silently blank for others, and a folder of 50 runs without it is one line, not 50."""
    lacking: dict[str, list[str]] = {}
    for _, run in runs[runs["sharpness_measured"] == True].iterrows():  # noqa: E712 (NaN: no sharpness.json)
        for section in dict.fromkeys(measure_heading(c)[1] for c in columns if pd.isna(run[c])):
            lacking.setdefault(section, []).append(run["run_dir"])
    notes = []
    for section, run_dirs in lacking.items():
        names = ", ".join(run_dirs[:3]) + (f" and {len(run_dirs) - 3} more" if len(run_dirs) > 3 else "")
        command = (f"msam-sharpness run={run_dirs[0]}" if len(run_dirs) == 1 else
                   f"msam-sharpness runs=<their folder>") + f" measures=[{section}]"
        notes.append(f"no {section} in sharpness.json: {len(run_dirs)} run(s): {names} (run: {command})")
    return notes


MEASURE_NOTES = {
    "topk": "λ_k (k=K): the K-th largest eigenvalue of the training-loss Hessian (sharpness.json's topk)",
    "density": "negative mass: the share of the Hessian's spectral density below 0, from stochastic Lanczos "
               "quadrature (sharpness.json's density); see tables=density",
    "sharpness": "worst@n / avg@n: m-sharpness L_S(w+δ) − L_S(w) averaged over batches S of n samples; worst: δ "
                 "the worst case in ‖T⁻¹δ‖ ≤ ρ (ascent), avg: the mean over δ = Tz, z Gaussian with E‖z‖² = ρ²; T = I, "
                 "or diag(|w| + η) for -adaptive (ASAM); n = micro (the run's micro-batch, batch size / m), batch (its batch size), "
                 "full (every measured sample) or a number",
    "landscape": "1-D rise: the mean of the training loss at both ends of the filter-normalized random slice "
                 "(α = ±span) minus the loss at the trained weights (α = 0); see tables=landscape",
}


def sharpness_table(runs: pd.DataFrame) -> Report:
    """Table 4: lambda_max (and the Hessian trace) at the final weights, mean ± std over seeds;
    beside them each further measure that some run's sharpness.json holds (k-th eigenvalue,
    negative mass, m-sharpness, 1-D rise)."""
    runs = single_method(runs)
    lam = mean_std(runs, "lambda_max")
    trace = mean_std(runs, "trace").rename(columns={"mean": "trace_mean", "std": "trace_std", "n": "trace_n"})
    numbers = lam.merge(trace, on=GROUP_KEYS, how="outer")
    extra = extra_measures(runs)
    for column in extra:  # outer: a configuration measured without lambda_max keeps its row
        part = mean_std(runs, column).rename(columns={"mean": f"{column}_mean", "std": f"{column}_std",
                                                      "n": f"{column}_n"})
        numbers = numbers.merge(part, on=GROUP_KEYS, how="outer")
    numbers = ordered(numbers)
    display = setting_columns(numbers).assign(**{
        "λ_max": [fmt(r.mean, r.std, 3) for r in numbers.itertuples()],
        "trace": [fmt(r.trace_mean, r.trace_std, 2) for r in numbers.itertuples()],
        "n": numbers["n"].fillna(0).astype(int),
    })
    for column in extra:
        heading, _, digits = measure_heading(column)
        display[heading] = [fmt(mean, std, digits) if digits is not None else significant(mean, std)
                            for mean, std in zip(numbers[f"{column}_mean"], numbers[f"{column}_std"])]
    unmeasured = runs[runs["sharpness_measured"] != True]  # noqa: E712
    notes = [f"no sharpness.json: {d} (run: msam-sharpness run={d})" for d in unmeasured["run_dir"]]
    notes += [f"no λ_max in sharpness.json: {d} (run: msam-sharpness run={d} measures=[lambda_max,trace])"
              for d in runs[(runs["sharpness_measured"] == True) & runs["lambda_max"].isna()]["run_dir"]]  # noqa: E712
    notes += missing_measures(runs, extra)
    notes += [MEASURE_NOTES[section] for section in dict.fromkeys(measure_heading(c)[1] for c in extra)]
    if any(c.startswith(SHARPNESS_PREFIX) for c in extra):
        radii = ", ".join(f"{rho:g}" for rho in sorted(runs["sharpness_rho"].dropna().unique()))
        notes.append(f"m-sharpness radius ρ (msam-sharpness's, not the training ρ): {radii}")
    if extra:
        notes.append("n counts the seeds with λ_max; each further measure's n is in tab4.csv (<measure>_n)")
    notes.append("paper: Table 4's values are not in our copy of the paper (see results/paper/README.md)")
    return Report("tab4", "Table 4: λ_max of the training-loss Hessian, mean ± std over seeds", numbers,
                  display, notes)


def ratio_to(frame: pd.DataFrame, column: str, method: str) -> list[float]:
    """Each row's column divided by that of `method` on the same dataset and model (NaN if none)."""
    base = frame[frame["method"] == method].groupby(["dataset", "model"])[column].mean()
    return [row[column] / base.get((row["dataset"], row["model"]), math.nan) for _, row in frame.iterrows()]


def runtime_table(runs: pd.DataFrame) -> Report:
    """Tables 5 / B.1 / B.2: training time, and its ratio to vanilla and SAM on the same setting."""
    paper = load_paper("tab5_runtime.csv")
    runs = single_method(runs)
    per_epoch = mean_std(runs, "seconds_per_epoch")
    total = mean_std(runs, "train_seconds").rename(columns={"mean": "total", "std": "total_std", "n": "total_n"})
    # compile.step: compiling is paid once per process, not per epoch, and is kept out of the
    # seconds above so that the ratios are the steady-state cost; its own column (NaN: no step compiled)
    compiling = mean_std(runs, "compile_seconds").rename(
        columns={"mean": "compile", "std": "compile_std", "n": "compile_n"})
    numbers = (per_epoch.merge(total, on=GROUP_KEYS).merge(compiling, on=GROUP_KEYS, how="left")
               .merge(implementations(runs), on=GROUP_KEYS, how="left"))
    numbers["x_vanilla"] = ratio_to(numbers, "mean", "vanilla")
    numbers["x_sam"] = ratio_to(numbers, "mean", "sam")
    numbers = ordered(with_paper(numbers, paper))
    paper_sam = paper[paper["method"] == "sam"].set_index(["dataset", "model"])["paper_mean"]
    numbers["paper_x_sam"] = [r.paper_mean / paper_sam.get((r.dataset, r.model), math.nan)
                              for r in numbers.itertuples()]
    display = setting_columns(numbers).assign(**{
        "impl": [impl or "—" for impl in numbers["impl"].fillna("")],
        "s / epoch": [fmt(r.mean, r.std, 2) for r in numbers.itertuples()],
        "total (s)": [fmt(r.total, None, 0) for r in numbers.itertuples()],
        "compile (s)": [fmt(r.compile, None, 1) for r in numbers.itertuples()],
        "× vanilla": [fmt(x) for x in numbers["x_vanilla"]],
        "× SAM": [fmt(x) for x in numbers["x_sam"]],
        "paper total (s)": [fmt(r.paper_mean, r.paper_std, 0) for r in numbers.itertuples()],
        "paper × SAM": [fmt(x) for x in numbers["paper_x_sam"]],
    })
    notes = ["times depend on the hardware: compare the ratios, not the seconds (paper: V100s, see notes in "
             "results/paper/tab5_runtime.csv)",
             "compile (s): what compile.step spent compiling (steps and impl=auto's tuning), kept out of "
             "s / epoch and total (s); — where no step was compiled"]
    return Report("tab5", "Tables 5 / B.1 / B.2: training time and its ratio to vanilla and SAM", numbers,
                  display, notes + missing_rows(numbers, paper))


def measure_columns(numbers: pd.DataFrame) -> dict:
    """The display columns of test accuracy, lambda_max and the trace (mean ± std) and their n
    (an unconverged or unmeasured seed has an accuracy but no lambda_max)."""
    return {
        "test acc (%)": [fmt(r.test_acc_mean, r.test_acc_std) for r in numbers.itertuples()],
        "λ_max": [fmt(r.lambda_max_mean, r.lambda_max_std, 3) for r in numbers.itertuples()],
        "trace": [fmt(r.trace_mean, r.trace_std, 1) for r in numbers.itertuples()],
        "n": numbers["test_acc_n"].fillna(0).astype(int),
        "n (λ_max)": numbers["lambda_max_n"].fillna(0).astype(int),
    }


def base_method(method: str) -> str:
    """'msam-adaptive' -> 'msam' (summary.json names a method's variant after a dash)."""
    return method.split("-")[0]


def distinguished(frame: pd.DataFrame, x: str) -> pd.DataFrame:
    """Labels made unique where two configurations would share a line and a point: the epochs
    are added when they differ, else the configuration's hash (seed_group, in its run names)."""
    keys = ["dataset", "model", "label", x]
    clash = frame.duplicated(keys, keep=False)
    if not clash.any():
        return frame
    epochs_differ = frame.groupby(keys, dropna=False)["epochs"].transform("nunique") > 1
    extra = [f", {r.epochs} epochs" if differ else f", config {r.seed_group}"
             for r, differ in zip(frame.itertuples(), epochs_differ)]
    return frame.assign(label=[label + more if c else label for label, more, c in zip(frame["label"], extra, clash)])


def same_setting(reference: pd.DataFrame, lines: pd.DataFrame) -> pd.DataFrame:
    """Reference rows on a data set, model and number of epochs that some line has."""
    ran = set(zip(lines["dataset"], lines["model"], lines["epochs"]))
    return reference[[key in ran for key in zip(reference["dataset"], reference["model"], reference["epochs"])]]


def variant(method: str) -> str:
    return "" if method == base_method(method) else f"{method} "


def accuracy_vs_m(runs: pd.DataFrame) -> Report:
    """Figure 1: mSAM's test accuracy, and lambda_max and the trace where measured, against m, one
    line per rho (SAM is m = 1; a variant such as msam-adaptive has lines of its own); vanilla of
    the same data set, model and epochs as a dashed line."""
    single = single_method(runs)
    lines = measures(single[single["method"].map(base_method).isin(["sam", "msam"])])
    lines = lines.sort_values(["dataset", "model", "rho", "m"])
    lines = distinguished(lines.assign(label=[f"{variant(r.method)}ρ={r.rho:g}" for r in lines.itertuples()]), "m")
    vanilla = same_setting(measures(single[single["method"] == "vanilla"]).assign(label="vanilla"), lines)
    vanilla = distinguished(vanilla, "m")
    numbers = pd.concat([vanilla, lines], ignore_index=True)
    display = setting_columns(numbers).assign(**measure_columns(numbers))
    notes = ["paper: Figure 1's points are not in our copy of the paper; the figure shows your runs"]
    figure = (against_figure(lines, x="m", xlabel="m (micro-batches per mini-batch)", values=MEASURES,
                             reference=vanilla, log2_x=True) if len(lines) else None)
    return Report("fig1", "Figure 1: test accuracy, λ_max and trace against m (m = 1 is SAM), mean ± std over seeds",
                  numbers, display, notes, figure)


def switching(runs: pd.DataFrame) -> Report:
    """Figure B.1: accuracy (and sharpness where measured) of hybrid runs against the switch
    percent, both directions. The single-method runs of the methods switched between, on the same
    data set, model and epochs, are dashed reference lines: with the settings the hybrids use,
    they are the switches at 0% and 100%."""
    hybrid = measures(runs[runs["switch_to"].notna()])
    hybrid = hybrid.assign(label=hybrid["method"] + " → " + hybrid["switch_to"],
                           switch_percent=100 * hybrid["switch_fraction"])
    hybrid = distinguished(hybrid.sort_values(["dataset", "model", "label", "switch_percent"]), "switch_percent")
    single = ordered(measures(single_method(runs)))
    involved = set(hybrid["method"]) | set(hybrid["switch_to"])
    reference = same_setting(single[single["method"].isin(involved)], hybrid)
    reference = reference.assign(label=[f"{r.method} (m={r.m}, ρ={r.rho:g}) throughout" for r in reference.itertuples()])
    display = hybrid[["dataset", "model", "label"]].rename(columns={"label": "order"}).assign(**{
        "switch %": [f"{p:g}" for p in hybrid["switch_percent"]], **measure_columns(hybrid)})
    notes = [f"reference: {r.label}: {fmt(r.test_acc_mean, r.test_acc_std)} (n={r.test_acc_n}), "
             f"λ_max {fmt(r.lambda_max_mean, r.lambda_max_std, 3)}" for r in reference.itertuples()]
    notes.append("order: the first method's m and ρ are in the run's name; the second's are switch.then in its "
                 "config.yaml")
    notes.append("paper: Figure B.1's points are not in our copy of the paper; the figure shows your runs")
    figure = (against_figure(hybrid, x="switch_percent", xlabel="switch percent (% of epochs with the first method)",
                             values=MEASURES, reference=reference) if len(hybrid) else None)
    return Report("figB1", "Figure B.1: switching between mSAM and vanilla", hybrid, display, notes, figure)


ESTIMATOR_LABELS = {"finite_difference": "finite difference", "exact": "exact"}  # RW-SAM's norm_estimator


def temperature(runs: pd.DataFrame) -> Report:
    """RW-SAM against its inverse temperature lambda: test accuracy, lambda_max and the trace, one
    line per norm_scale and norm estimator (and rho, m, variant); the other single-method runs of the same data set,
    model and epochs (vanilla, SAM, mSAM, ...) as dashed reference lines."""
    single = single_method(runs)
    is_rw = single["method"].map(base_method) == "rwsam"
    rw = measures(single[is_rw]).sort_values(["dataset", "model", "method", "norm_estimator", "norm_scale", "rho", "m",
                                              "rw_lambda"])
    rw = distinguished(rw.assign(label=[f"{variant(r.method)}RW-SAM {r.norm_scale}, {ESTIMATOR_LABELS[r.norm_estimator]}, "
                                        f"ρ={r.rho:g}"
                                        + (f", m={r.m}" if r.m > 1 else "") for r in rw.itertuples()]), "rw_lambda")
    reference = same_setting(ordered(measures(single[~is_rw])), rw)
    reference = distinguished(reference.assign(label=[f"{r.method} m={r.m} ρ={r.rho:g}" for r in
                                                      reference.itertuples()], rw_lambda=float("nan")), "rw_lambda")
    numbers = pd.concat([reference, rw], ignore_index=True)
    display = setting_columns(numbers).assign(**{
        "λ": [f"{x:g}" if x == x else "—" for x in numbers["rw_lambda"]],
        "norm_scale": numbers["norm_scale"].fillna("—"),
        "norms": numbers["norm_estimator"].map(ESTIMATOR_LABELS).fillna("—"), **measure_columns(numbers)})
    notes = ["lambda = 0 gives every sample the same weight: SAM, under either norm_scale",
             "the RW-SAM poster gives no sharpness numbers; its claim is that reweighting moves SAM toward mSAM"]
    figure = (against_figure(rw, x="rw_lambda", xlabel="λ (inverse temperature of the sample weights)",
                             values=MEASURES, reference=reference) if len(rw) else None)
    return Report("temperature", "RW-SAM against its temperature λ: test accuracy, λ_max and trace, mean ± std "
                  "over seeds", numbers, display, notes, figure)


CURVE_POINTS = (0.25, 0.5, 0.75, 1.0)  # the display's epochs, as fractions of the run


def learning_curves(runs: pd.DataFrame) -> Report:
    """Learning curves: test accuracy and training loss against the epoch for every configuration
    (mean, band of ± one std over seeds). The CSV holds every epoch; the display the quarter points."""
    per_epoch, notes = epoch_rows(runs)
    numbers = curve_numbers(per_epoch) if len(per_epoch) else pd.DataFrame(columns=[*GROUP_KEYS, "epoch", "label"])
    rows = []
    order = numbers["method"].map(lambda m: METHOD_ORDER.get(m, 9)) if len(numbers) else []
    for _, line in numbers.assign(_order=order).sort_values(["_order", "m", "rho", "epoch"], kind="stable").groupby(
            [*GROUP_KEYS], sort=False, dropna=False):
        first = line.iloc[0]
        shown = {"configuration": first["label"], "dataset": first["dataset"], "model": first["model"],
                 "n": int(line["n"].max())}
        for point in CURVE_POINTS:
            epoch = max(1, round(point * int(first["epochs"])))
            at = line[line["epoch"] == epoch]
            shown[f"acc @ ep {epoch}"] = fmt(at["test_acc_mean"].iloc[0], at["test_acc_std"].iloc[0]) if len(at) else "—"
        last = line[line["epoch"] == line["epoch"].max()].iloc[0]
        shown["train loss"] = fmt(last["train_loss_mean"], last["train_loss_std"], 4)
        rows.append(shown)
    display = pd.DataFrame(rows)
    if len(display):
        display = display.sort_values(["dataset", "model"], kind="stable")
    return Report("curves", "Learning curves: test accuracy (%) at epoch e and the last epoch's training loss, "
                  "mean ± std over seeds", numbers,
                  display, notes + ["every epoch of every configuration is in curves.csv"],
                  curves_figure(numbers, CURVE_VALUES) if len(numbers) else None)


def configuration_rows(numbers: pd.DataFrame) -> pd.DataFrame:
    """Configurations (one per row) in the methods' usual order, with the figures' labels."""
    numbers = ordered(numbers)
    return numbers.assign(label=labels(numbers) if len(numbers) else [])


def spectral_density(runs: pd.DataFrame) -> Report:
    """The Hessian's spectral density (stochastic Lanczos quadrature, Gaussian-smoothed): one panel
    per data set and model, one line per configuration, mean and a ± std band over seeds on a
    common grid; the table gives the negative mass."""
    measured, found, notes = sections(runs, "density")
    numbers = configuration_rows(mean_std(measured, "negative_mass"))
    display = numbers[["dataset", "model"]].assign(**{
        "configuration": numbers["label"],
        "negative mass": [fmt(r.mean, r.std, 4) for r in numbers.itertuples()],
        "n": numbers["n"].astype(int)})
    notes.append("negative mass: the share of the density below 0 (each probe's Lanczos weights on negative "
                 "Ritz values, averaged over probes); seeds' densities are evaluated on one grid per panel from "
                 "their Ritz values, weights and σ, and averaged")
    figure = density_figure(density_curves(measured, found)) if found else None
    return Report("density", "Hessian spectral density: negative mass, mean ± std over seeds", numbers, display,
                  notes, figure)


RISE_HEADINGS = {"minus": "rise at −span", "plus": "rise at +span"}


def loss_landscape(runs: pd.DataFrame) -> Report:
    """The loss around the trained weights: 1-D slices (random filter-normalized direction, top
    eigenvector) and the linear path to a paired run, one line per configuration (mean, ± std band
    over seeds), and 2-D planes as contours (mean over seeds); the table gives each slice's rise at
    both ends over the loss at the trained weights."""
    measured, found, notes = sections(runs, "landscape")
    per_run = rise_rows(measured, found)
    numbers = None
    for column in [f"{k}_{end}" for k in SLICE_KINDS[:2] for end in RISE_HEADINGS]:
        part = mean_std(per_run, column).rename(columns={"mean": f"{column}_mean", "std": f"{column}_std",
                                                         "n": f"{column}_n"})
        numbers = part if numbers is None else numbers.merge(part, on=GROUP_KEYS, how="outer")
    seeds = per_run.groupby(GROUP_KEYS, sort=False, dropna=False).size().rename("n").reset_index()
    numbers = configuration_rows(seeds.merge(numbers, on=GROUP_KEYS, how="left"))
    display = numbers[["dataset", "model"]].assign(configuration=numbers["label"])
    for kind in SLICE_KINDS[:2]:
        if numbers[f"{kind}_minus_n"].notna().any():
            for end, heading in RISE_HEADINGS.items():
                display[f"{kind}: {heading}"] = [fmt(mean, std, 4) for mean, std in
                                                 zip(numbers[f"{kind}_{end}_mean"], numbers[f"{kind}_{end}_std"])]
    display["n"] = numbers["n"].astype(int)
    lines = landscape_lines(measured, found)
    planes, plane_notes = landscape_planes(measured, found)
    notes += plane_notes
    notes.append("rise: the training loss (no weight decay) at the slice's end minus the loss at the trained "
                 "weights (α = 0); random: a filter-normalized random direction; eigenvector: the top Hessian "
                 "eigenvector")
    figure = landscape_figure(lines, planes) if lines or planes else None
    return Report("landscape", "Loss landscape: rise of the training loss along 1-D slices, mean ± std over seeds",
                  numbers, display, notes, figure)


REPORTS = {"tab2": accuracy_table, "tab4": sharpness_table, "tab5": runtime_table, "fig1": accuracy_vs_m,
           "figB1": switching, "rwsam": rwsam_table, "tab3": glue_table,
           "curves": learning_curves, "temperature": temperature, "density": spectral_density,
           "landscape": loss_landscape}
