"""Leaderboards: every format carries the JSON's numbers, incomparable runs never share a ranking,
the best value per column is marked within its group, and columns are chosen by name."""

import csv
import io
import json
import re

import pytest
from fake_results import make_result
from typer.testing import CliRunner

from dermabench import leaderboard
from dermabench.cli import app
from dermabench.errors import DermabenchError

NUMBER = re.compile(r"[+-]?\d+\.\d+")
COLUMNS = "run_id,fid,relative_fid,near_copy_rate,auc,accuracy,delta_auc"
ARMS = ("real", "real+synthetic", "synthetic")


def results():
    """Two comparable runs (same group) and one on another extractor (its own group)."""
    return [
        make_result("run-a", "augment", fid=150.123456, auc=0.71234, delta=0.0213),
        make_result("run-b", "dermaflux", fid=90.987654, auc=0.80321, delta=0.0917),
        make_result("run-c", "dermaflux", extractor="inception", fid=12.5, auc=0.9, delta=0.2),
    ]


def expected(result, column):
    """[value, ci low, ci high] (or [value]) of a leaderboard column, read straight from the result JSON."""
    if column == "fid":
        return [result["fidelity"]["fid"]]
    if column == "relative_fid":
        return [result["fidelity"]["relative_fid"]]
    if column == "near_copy_rate":
        return [result["memorization"]["near_copy_rate"]]
    base, arm = re.match(r"(\w+)\[(.+)\]", column).groups()
    if base.startswith("delta_"):
        delta = result["arms"][arm]["delta_vs_real"][base[6:]]
        return [delta["value"], *delta["ci95"]]
    return [result["arms"][arm][base], *result["arms"][arm][f"{base}_ci95"]]


def digits(column):
    return 2 if column == "relative_fid" else 3


def check_numbers(by_run, header_columns, parse_cell):
    """Every numeric cell shows the JSON's value (and CI) to the printed precision."""
    checked = 0
    for run_id, cells in by_run.items():
        result = next(r for r in results() if r["run_id"] == run_id)
        for column, cell in zip(header_columns, cells):
            if column == "run_id":
                continue
            shown = [float(x) for x in parse_cell(cell)]
            want = expected(result, column)
            assert shown == pytest.approx(want, abs=0.5 * 10 ** -digits(column) + 1e-12), (run_id, column, cell)
            checked += 1
    assert checked >= 3 * 10


def table_columns(rows_for_group):
    return ["run_id", *leaderboard.expand_columns(COLUMNS.split(",")[1:], rows_for_group)]


def test_markdown_round_trips_the_json_numbers():
    text = leaderboard.render(results(), "md", COLUMNS)
    by_run, headers = {}, []
    for block in text.split("### ")[1:]:
        lines = [line for line in block.splitlines() if line.startswith("| ")]
        header = [cell.strip() for cell in lines[0].strip("|").split("|")]
        headers.append(header)
        for line in lines[1:]:
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            by_run[cells[1]] = cells[2:]
    rows = [leaderboard.row_of(r) for r in results()]
    columns = table_columns(rows)
    assert headers[0] == ["#", *(leaderboard.label_of(c) for c in columns)]
    check_numbers(by_run, columns[1:], NUMBER.findall)


def test_latex_round_trips_the_json_numbers_and_uses_booktabs():
    text = leaderboard.render(results(), "latex", COLUMNS)
    assert text.count(r"\toprule") == text.count(r"\midrule") == text.count(r"\bottomrule") == 2
    by_run = {}
    for block in text.split(r"\midrule")[1:]:
        for line in block.split(r"\bottomrule")[0].strip().splitlines():
            cells = line.removesuffix(r" \\").split(" & ")
            by_run[cells[1]] = cells[2:]
    columns = table_columns([leaderboard.row_of(r) for r in results()])
    check_numbers(by_run, columns[1:], NUMBER.findall)


def test_csv_round_trips_the_json_numbers_exactly():
    rows = list(csv.DictReader(io.StringIO(leaderboard.render(results(), "csv", COLUMNS))))
    assert [row["run_id"] for row in rows] == ["run-b", "run-a", "run-c"]  # group order, ranked within
    for row in rows:
        result = next(r for r in results() if r["run_id"] == row["run_id"])
        for column in ("fid", "relative_fid", "near_copy_rate", "auc[real]", "accuracy[synthetic]",
                       "delta_auc[real+synthetic]"):  # fmt: skip
            want = expected(result, column)
            assert float(row[column]) == want[0]
            ci_column = leaderboard.ci_key(column)
            if ci_column:
                assert json.loads(row[ci_column]) == want[1:]


def test_json_round_trips_the_json_numbers_exactly():
    groups = json.loads(leaderboard.render(results(), "json"))
    for group in groups:
        for row in group["rows"]:
            result = next(r for r in results() if r["run_id"] == row["run_id"])
            assert row["fid"] == result["fidelity"]["fid"]
            for arm in ARMS:
                assert row[f"auc[{arm}]"] == result["arms"][arm]["auc"]
                assert row[f"auc_ci95[{arm}]"] == result["arms"][arm]["auc_ci95"]
            assert row["delta_auc[synthetic]"] == result["arms"]["synthetic"]["delta_vs_real"]["auc"]["value"]


def test_incomparable_runs_are_never_ranked_together():
    # run-c has the best FID and AUC of all, but on another extractor: it must not take the marks from a or b
    groups = json.loads(leaderboard.render(results(), "json"))
    assert [[row["run_id"] for row in g["rows"]] for g in groups] == [["run-b", "run-a"], ["run-c"]]
    assert [g["group"]["extractor"] for g in groups] == ["efficientnet-lite0", "inception"]
    best = {row["run_id"]: set(row["best"]) for g in groups for row in g["rows"]}
    assert {"fid", "auc[real+synthetic]", "delta_auc[real+synthetic]"} <= best["run-b"]
    assert "fid" not in best["run-a"]
    assert best["run-c"] == set()  # alone in its group: nothing to be best against
    md = leaderboard.render(results(), "md")
    assert md.count("### ") == 2
    run_c_line = [line for line in md.splitlines() if line.startswith("| 1 | dermaflux") and "12.500" in line]
    assert run_c_line and "**" not in run_c_line[0]


def test_other_group_keys_separate_runs_too():
    runs = [make_result("x", dataset="phantom"), make_result("y", dataset="ham10000"),
            make_result("z", profile="quick"), make_result("w", n_synthetic=60),
            make_result("v", seed=1)]  # another seed: another split, another test set  # fmt: skip
    other_options = make_result("u")
    other_options["config"]["dataset_options"] = {"n": "800"}
    groups = json.loads(leaderboard.render([*runs, other_options], "json"))
    assert len(groups) == 6
    assert {g["group"]["dataset"] for g in groups} == {"phantom", "ham10000", "phantom (n=800)"}


def test_results_of_two_protocol_versions_are_never_ranked_together():
    """Protocol 2 changed how relative FID and the CIs are computed: a v1 row is not a v2 row's rival."""
    old, new = make_result("v1-run", fid=50.0), make_result("v2-run", fid=60.0)
    new["protocol"] = {"name": "real-vs-synthetic", "version": 2}
    groups = json.loads(leaderboard.render([old, new], "json"))
    assert [(g["group"]["protocol"], [r["run_id"] for r in g["rows"]]) for g in groups] == [
        (1, ["v1-run"]), (2, ["v2-run"])
    ]
    assert "protocol=2" in leaderboard.render([old, new], "md")


def test_best_respects_direction_and_marks_ties():
    runs = [make_result("a", fid=50.0, auc=0.7), make_result("b", fid=40.0, auc=0.7), make_result("c", fid=60.0, auc=0.6)]
    rows = [leaderboard.row_of(r) for r in runs]
    best = leaderboard.best_columns(rows, ["fid", "auc[real+synthetic]", "fid_real_floor"])
    assert best == {"a": {"auc[real+synthetic]"}, "b": {"fid", "auc[real+synthetic]"}, "c": set()}
    md = leaderboard.render(runs, "md", "run_id,fid,auc[real+synthetic]")
    assert "| b | **40.000** | **0.700** [" in md
    assert "| c | 60.000 | 0.600 [" in md
    latex = leaderboard.render(runs, "latex", "run_id,fid")
    assert r"b & $\mathbf{40.000}$ \\" in latex
    rows_csv = {row["run_id"]: row["best"] for row in csv.DictReader(io.StringIO(leaderboard.render(runs, "csv", "fid")))}
    assert rows_csv == {"a": "", "b": "fid", "c": ""}


def test_columns_expand_arm_metrics_and_keep_order():
    rows = [leaderboard.row_of(make_result())]
    names = leaderboard.parse_columns("generator, delta_auc, auc[real], fid")
    assert leaderboard.expand_columns(names, rows) == [
        "generator", "delta_auc[real+synthetic]", "delta_auc[synthetic]", "auc[real]", "fid"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "columns, message",
    [
        ("fid,aucc", "unknown column 'aucc'"),
        ("auc[rea]", "unknown arm 'rea'"),
        ("fidd[real]", "unknown column 'fidd'"),
        (" , ", "--columns is empty"),
    ],
)
def test_bad_columns_name_the_culprit(columns, message):
    with pytest.raises(DermabenchError, match=re.escape(message)):
        leaderboard.render(results(), "md", columns)


def test_latex_escapes_text():
    text = leaderboard.render([make_result("r_1", generator="my_gen&co")], "latex", "run_id,generator")
    assert r"r\_1 & my\_gen\&co \\" in text


def test_runs_of_one_generator_with_other_options_are_told_apart():
    trained = make_result("trained", "dermaflux", fid=700.0)
    untrained = make_result("untrained", "dermaflux", fid=1000.0)
    untrained["config"]["generator_options"] = {"train": "none", "steps": 8}
    untrained["config"]["classifier_options"] = {"epochs": 5}
    trained["config"]["classifier_options"] = {"epochs": 3}  # the smoke profile's own cnn default: not shown
    table = leaderboard.render([trained, untrained], "md", "generator,classifier,fid")
    assert "| 1 | dermaflux | cnn | **700.000** |" in table
    assert "| 2 | dermaflux (steps=8, train=none) | cnn (epochs=5) | 1000.000 |" in table
    (group,) = json.loads(leaderboard.render([trained, untrained], "json"))
    rows = {row["run_id"]: row for row in group["rows"]}
    assert rows["untrained"]["generator"] == "dermaflux"  # data formats keep the name and the options apart
    assert rows["untrained"]["generator_options"] == "steps=8, train=none"
    assert rows["trained"]["generator_options"] == ""


def test_cli_leaderboard_formats_and_columns(tmp_path):
    for result in results():
        folder = tmp_path / result["run_id"]
        folder.mkdir()
        (folder / "result.json").write_text(json.dumps(result))
    runner = CliRunner()
    latex = runner.invoke(app, ["leaderboard", str(tmp_path), "--format", "latex", "--columns", "generator,fid"])
    assert latex.exit_code == 0, latex.output
    assert r"\toprule" in latex.stdout and r"$\mathbf{90.988}$" in latex.stdout
    bad = runner.invoke(app, ["leaderboard", str(tmp_path), "--columns", "aucc"])
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: unknown column 'aucc'. Known: {', '.join(sorted(leaderboard.known_columns()))}. Did you mean 'auc'?"
    ]
    fmt = runner.invoke(app, ["leaderboard", str(tmp_path), "--format", "tex"])
    assert fmt.exit_code == 2 and "unknown format 'tex'" in fmt.stderr


def test_a_broken_result_file_is_named_not_silently_dropped_and_one_result_file_is_accepted(tmp_path):
    good = make_result("good-run")
    (tmp_path / "good-run").mkdir()
    (tmp_path / "good-run" / "result.json").write_text(json.dumps(good))
    for name, text in (("truncated", json.dumps(good)[:50]), ("a-list", "[]"),
                       ("future", json.dumps({**good, "schema_version": 99}))):  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(text)
    out = CliRunner().invoke(app, ["leaderboard", str(tmp_path), "--format", "csv", "--columns", "run_id"])
    assert out.exit_code == 0 and [row["run_id"] for row in csv.DictReader(io.StringIO(out.stdout))] == ["good-run"]
    warnings = sorted(out.stderr.splitlines())
    assert len(warnings) == 3 and all(
        line.startswith(f"warning: skipped {tmp_path / name / 'result.json'}: ")
        for line, name in zip(warnings, ("a-list", "future", "truncated"))
    )
    assert "schema_version 99 is not 1" in warnings[1]
    one = CliRunner().invoke(app, ["leaderboard", str(tmp_path / "good-run" / "result.json"), "--format", "csv",
                                   "--columns", "run_id"])  # fmt: skip
    assert one.exit_code == 0 and "good-run" in one.stdout
