"""`dermabench sweep`: a grid of runs through the protocol's API, finished cells skipped, errors that name the key."""

import json

import pytest
from fake_results import make_result
from typer.testing import CliRunner

from dermabench import protocol
from dermabench.cli import app
from dermabench.errors import DermabenchError, PluginError
from dermabench.sweep import load_sweep, run_sweep

GRID = """
profile = "smoke"
dataset = "phantom"
out = "{out}"

[grid]
generator = ["augment"]
classifier = ["cnn"]
n_real = [100]
n_synthetic = [60, 120]
seed = [0, 1]

[options.cnn]
epochs = 1
"""


class FakeProtocol:
    """Stands in for protocol.run: writes a contract-valid result where the real run would, and counts calls."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, config, progress=None):
        self.calls.append(config)
        if self.fail_on and self.fail_on(config):
            raise PluginError("generator 'augment' failed in generate(): RuntimeError: boom")
        run = protocol.Run(config)
        result = make_result(run.run_id, config.generator, n_synthetic=config.n_synthetic, seed=config.seed,
                             n_real=config.n_real, auc=0.6 + config.n_synthetic / 1000)  # fmt: skip
        result["config"] = config.to_dict()
        run.run_dir.mkdir(parents=True, exist_ok=True)
        path = run.run_dir / "result.json"
        path.write_text(json.dumps(result))
        return path


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(GRID.format(out=tmp_path / "out"))
    return path


def test_grid_cells_and_their_configs(sweep_file, tmp_path):
    cells, out = load_sweep(sweep_file)
    assert out == tmp_path / "out"
    assert [(c.values["n_synthetic"], c.values["seed"]) for c in cells] == [(60, 0), (60, 1), (120, 0), (120, 1)]
    assert all(c.config.profile == "smoke" and c.config.n_real == 100 for c in cells)
    assert all(c.config.classifier_options == {"epochs": 1} for c in cells)  # [options.cnn] over the profile's 3
    assert cells[0].config.dataset_options == {"n": 500}  # the smoke profile's phantom size still applies
    assert len({c.run_id for c in cells}) == 4


def test_sweep_skips_finished_cells(sweep_file, tmp_path):
    fake = FakeProtocol()
    first = run_sweep(sweep_file, runner=fake)
    assert len(fake.calls) == 4 and first.count("ran") == 4
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.tex", "report.html",
            "synthetic_ratio.png"} <= set(first.files)  # fmt: skip
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert sorted(row["run_id"] for group in board for row in group["rows"]) == sorted(c.run_id for c in first.cells)

    again = FakeProtocol()
    second = run_sweep(sweep_file, runner=again)
    assert again.calls == [] and second.count("finished") == 4

    # one more seed in the grid: only the new cells run
    sweep_file.write_text(sweep_file.read_text().replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    third = FakeProtocol()
    run_sweep(sweep_file, runner=third)
    assert [(c.n_synthetic, c.seed) for c in third.calls] == [(60, 2), (120, 2)]


def test_skipping_uses_the_protocols_own_run_id(sweep_file):
    """A cell the sweep calls finished is one the real protocol also finds finished (and only reports)."""
    run_sweep(sweep_file, runner=FakeProtocol())
    cells, _ = load_sweep(sweep_file)
    run = protocol.Run(cells[0].config)
    assert run.execute() == cells[0].result_path
    assert run.already_finished


def test_an_unfinished_run_folder_is_run_again(sweep_file, tmp_path):
    cells, _ = load_sweep(sweep_file)
    (tmp_path / "out" / cells[0].run_id).mkdir(parents=True)  # killed before result.json was written
    fake = FakeProtocol()
    run_sweep(sweep_file, runner=fake)
    assert len(fake.calls) == 4


def test_a_failing_cell_is_reported_and_the_rest_run(sweep_file):
    fake = FakeProtocol(fail_on=lambda config: config.n_synthetic == 60 and config.seed == 1)
    sweep = run_sweep(sweep_file, runner=fake)
    assert len(fake.calls) == 4
    assert sweep.count("ran") == 3 and sweep.count("failed") == 1
    [failed] = [c for c in sweep.cells if c.status == "failed"]
    assert "boom" in failed.error and failed.values == {"generator": "augment", "classifier": "cnn", "n_real": 100,
                                                         "n_synthetic": 60, "seed": 1}  # fmt: skip
    assert not failed.result_path.exists()


def test_dry_run_runs_and_writes_nothing(sweep_file, tmp_path):
    fake = FakeProtocol()
    sweep = run_sweep(sweep_file, runner=fake, dry_run=True)
    assert fake.calls == [] and sweep.count("pending") == 4 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (("profile =", "profil ="), "unknown key in {path} 'profil'"),
        (("[grid]", "[grid]\nn_synth = [1]"), "unknown grid key in {path} 'n_synth'"),
        (("n_real = [100]", "n_real = 100"), "{path}: 'grid.n_real' must be a non-empty list, got 100"),
        (("n_real = [100]", "n_real = []"), "{path}: 'grid.n_real' must be a non-empty list, got []"),
        (("n_real = [100]", 'n_real = ["many"]'), ("{path} (cell generator='augment', classifier='cnn', n_real='many', "
                                                   "n_synthetic=60, seed=0): 'n_real' must be an integer, got 'many'")),
        (('generator = ["augment"]', 'generator = ["augmnt"]'), "{path}: 'grid.generator': unknown generator 'augmnt'"),
        (('dataset = "phantom"', 'dataset = "phantom"\nseed = 3'), "{path}: 'seed' is both a fixed setting and 'grid.seed'"),
        (("[options.cnn]", "[options]"), "{path}: 'options' must hold one table per plugin"),
        (('out = "', 'out = "x"\nout2 = "'), "unknown key in {path} 'out2'"),
        (("epochs = 1", "epocs = 1"), "{path}: 'grid.classifier': classifier 'cnn': unknown option 'epocs'"),
        (("[options.cnn]", "[options.cnm]"), "unknown plugin in {path} [options.cnm] (no cell uses it) 'cnm'"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(sweep_file, edit, message):
    text = sweep_file.read_text()
    assert edit[0] in text
    sweep_file.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(DermabenchError) as caught:
        load_sweep(sweep_file)
    assert str(caught.value).startswith(message.format(path=sweep_file))


def test_cli_sweep(sweep_file, tmp_path, monkeypatch):
    fake = FakeProtocol()
    monkeypatch.setattr(protocol, "run", fake)
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "--config", str(sweep_file), "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(fake.calls) == 4
    assert result.stdout.startswith("### dataset=phantom")  # the leaderboard
    assert result.stderr.count("ran ") == 4 and "report.html: " in result.stderr
    again = runner.invoke(app, ["sweep", "--config", str(sweep_file), "--quiet"])
    assert again.exit_code == 0 and len(fake.calls) == 4 and again.stderr.count("finished ") == 4

    missing = runner.invoke(app, ["sweep", "--config", str(tmp_path / "no.toml")])
    assert missing.exit_code == 2
    assert missing.stderr.strip().splitlines() == [f"error: sweep config not found: {tmp_path / 'no.toml'}"]


def test_cli_sweep_exits_1_when_a_cell_failed(sweep_file, monkeypatch):
    monkeypatch.setattr(protocol, "run", FakeProtocol(fail_on=lambda config: config.seed == 0))
    result = CliRunner().invoke(app, ["sweep", "--config", str(sweep_file), "--quiet"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "error: 2 of 4 cells failed"


def test_published_sweep_configs_load(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # their paths are relative to the repository root, where the README runs them
    cells, out = load_sweep("benchmarks/sweeps/quick_phantom.toml")
    assert out == Path("results/quick_phantom") and len(cells) == 6
    assert {c.config.profile for c in cells} == {"quick"}
    ham = "benchmarks/sweeps/quick_ham10000.toml"
    if Path("../shared/data/ham10000").is_dir():
        assert {c.config.dataset for c in load_sweep(ham)[0]} == {"ham10000"}
    else:
        with pytest.raises(DermabenchError, match="data-dir does not exist"):
            load_sweep(ham)
