"""The command line, through its runner: exact errors for users, JSON and tables for scripts."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from dermabench.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(map(str, args)))


def test_unknown_generator_is_one_line_with_suggestion_and_exit_2():
    result = invoke("run", "--generator", "augmnt", "--profile", "smoke")
    assert result.exit_code == 2
    from dermabench import plugins

    known = ", ".join(sorted(plugins.registered("generator")))
    assert result.stderr.strip().splitlines() == [
        f"error: unknown generator 'augmnt'. Known: {known}. Did you mean 'augment'?"
    ]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "error: --seeds must be > 0, got 0"),
        (["--classifier-opt", "epochs"], "error: --classifier-opt expects key=value, got 'epochs'"),
        (["--config", "/no/such.toml"], "error: config file not found: /no/such.toml"),
        (["--data-dir", "/no/such/dir"], "error: --data-dir does not exist: /no/such/dir"),
        (["--generator", "folder"], "error: generator 'folder' needs --generator-opt path=DIR"),
    ],
)
def test_bad_input_exits_2_naming_the_culprit(args, message, tmp_path):
    result = invoke("run", "--profile", "smoke", "--out", tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in result.output


def test_list_generators():
    result = invoke("list", "generators")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == sorted(names) and {"augment", "folder"} <= set(names)


def test_list_unknown_kind():
    result = invoke("list", "generatrs")
    assert result.exit_code == 2
    assert "Did you mean 'generators'?" in result.stderr


def test_plugins_json():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["augment"]["registers"] == {"generator": ["augment"]}
    assert rows["efficientnet-lite0"]["hooks"] == ["register_extractors"]


def test_data_preview_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = invoke("data", "preview", "phantom", "--out", out, "--per-class", 4, "--image-size", 48)
    assert result.exit_code == 0, result.output
    width, height = Image.open(out).size
    assert width >= 4 * 48 and height >= 2 * 48


def test_folder_generator_run_then_leaderboard(tmp_path):
    """`dermabench run --generator folder --generator-opt path=DIR` benchmarks a folder of images."""
    from dermabench_plugins.phantom import PhantomDataset

    folder = tmp_path / "synthetic"
    counts = {0: 0, 1: 0}
    for sample in PhantomDataset(n=600, seed=99).samples():
        sub = folder / ("malignant" if sample.label else "benign")
        sub.mkdir(parents=True, exist_ok=True)
        sample.image.save(sub / f"{counts[sample.label]:04d}.png")
        counts[sample.label] += 1
    out = tmp_path / "results"
    # two generators in one command: `folder.path` goes to folder only
    result = invoke("run", "--profile", "smoke", "--generator", "folder", "--generator", "augment",
                    "--generator-opt", f"folder.path={folder}", "--n-synthetic", 80, "--out", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    # the leaderboard names each generator with its own options: augment got none
    assert f"folder (path={folder}) | cnn |" in result.stdout and "| augment | cnn |" in result.stdout
    saved = {}
    for result_file in out.rglob("result.json"):
        one = json.loads(result_file.read_text())
        saved[one["config"]["generator"]] = one
        predictions = json.loads((result_file.parent / "predictions.json").read_text())
        saved[one["config"]["generator"]]["test_ids"] = predictions["image_id"]
    assert set(saved) == {"folder", "augment"}
    assert saved["folder"]["arms"]["synthetic"]["n_synthetic"] == 80
    assert saved["folder"]["config"]["generator_options"] == {"path": str(folder)}
    assert saved["augment"]["config"]["generator_options"] == {}
    # the same real test set and real arm for both: only the synthetic images differ
    assert saved["folder"]["test_ids"] == saved["augment"]["test_ids"]
    assert saved["folder"]["arms"]["real"]["auc"] == saved["augment"]["arms"]["real"]["auc"]

    table = invoke("leaderboard", out, "--format", "json")
    assert table.exit_code == 0
    [group] = json.loads(table.stdout)
    rows = {row["generator"]: row for row in group["rows"]}
    assert set(rows) == {"folder", "augment"}
    for name, one in saved.items():
        assert rows[name]["auc[real+synthetic]"] == one["arms"]["real+synthetic"]["auc"]
        assert rows[name]["fid"] == one["fidelity"]["fid"]


def test_a_generator_option_for_a_generator_not_in_the_run_is_an_error():
    result = invoke("run", "--profile", "smoke", "--generator", "augment", "--generator-opt", "folder.path=x")
    assert result.exit_code == 2
    assert "--generator-opt folder.path: 'folder' is not one of the --generator names ['augment']" in result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [(["--per-class", "0"], "--per-class"), (["--image-size", "0"], "--image-size"),
     (["--out", "grid.jpg"], "the preview is a PNG")],  # fmt: skip
)
def test_data_preview_refuses_bad_flags(tmp_path, flags, message):
    flags = [str(tmp_path / f) if f.endswith(".jpg") else f for f in flags]
    result = invoke("data", "preview", "phantom", "--out", tmp_path / "grid.png", *flags)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "grid.jpg").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    from dermabench import protocol

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "run", interrupted)
    result = invoke("run", "--profile", "smoke", "--out", tmp_path)
    assert result.exit_code == 130
    assert "interrupted: finished stages are kept; run the same command again to resume" in result.stderr


def test_a_generator_named_twice_is_refused():
    result = invoke("run", "--profile", "smoke", "--generator", "augment", "--generator", "augment")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --generator augment is given twice; name each generator once"


def test_a_finished_runs_command_again_rewrites_nothing(tmp_path):
    args = ("run", "--profile", "smoke", "--generator", "augment", "--arms", "real", "--out", tmp_path, "--quiet")
    assert invoke(*args).exit_code == 0
    (report,) = tmp_path.glob("*/report.html")
    before = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/*") if path.is_file()}
    again = invoke(*args)
    assert again.exit_code == 0 and f"report: {report}" in again.stderr
    assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/*") if path.is_file()} == before
