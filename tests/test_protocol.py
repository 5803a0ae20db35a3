"""The whole protocol on the smoke profile: contract, determinism, caches, never overwriting."""

import json

import pytest
from PIL import Image

from in_test_plugins import registered_plugin

import dermabench
from dermabench.config import build_config
from dermabench.errors import DermabenchError, PluginError
from dermabench.protocol import Run, run
from dermabench.results import validate_result


def smoke(tmp_path, **flags):
    return build_config(profile="smoke", out=str(tmp_path), **flags)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    path = run(build_config(profile="smoke", out=str(out)))
    return path, json.loads(path.read_text())


def test_result_matches_the_contract(smoke_run):
    path, result = smoke_run
    validate_result(result)
    assert result["protocol"] == {"name": "real-vs-synthetic", "version": 2}
    assert set(result["arms"]) == {"real", "real+synthetic", "synthetic"}
    real, mixed, synthetic = (result["arms"][arm] for arm in ("real", "real+synthetic", "synthetic"))
    assert (real["n_real"], real["n_synthetic"]) == (120, 0)
    assert (mixed["n_real"], mixed["n_synthetic"]) == (120, 120)
    assert (synthetic["n_real"], synthetic["n_synthetic"]) == (0, 120)
    for arm in (real, mixed, synthetic):
        assert 0.0 <= arm["auc"] <= 1.0
        lo, hi = arm["auc_ci95"]
        assert lo <= arm["auc"] <= hi
    assert mixed["delta_vs_real"]["auc"]["value"] == pytest.approx(mixed["auc"] - real["auc"])
    data = result["data"]
    assert data["n_train_pool"] + data["n_val"] + data["n_test"] == data["dataset_report"]["n_images"]
    fidelity = result["fidelity"]
    assert fidelity["extractor"] == "efficientnet-lite0"
    assert fidelity["fid"] > 0 and fidelity["fid_real_floor"] > 0
    assert fidelity["relative_fid"] == pytest.approx(fidelity["fid"] / fidelity["fid_real_floor"])
    assert set(fidelity["per_class"]) == {"benign", "malignant"}
    assert 0.0 <= result["memorization"]["near_copy_rate"] <= 1.0
    assert set(result["timings_s"]) >= {"fit_generator", "generate", "fidelity", "classify", "total"}
    assert result["plugins"]["generator"] == {"name": "dermaflux", "plugin": "dermaflux", "version": dermabench.__version__}
    # phantom metadata has every subgroup attribute; each subgroup's n adds up to the test set
    assert set(result["subgroups"]) == {"site", "sex", "age_band", "fitzpatrick"}
    for attribute in result["subgroups"].values():
        assert sum(g["n"] for g in attribute["groups"].values()) + attribute["n_unknown"] == data["n_test"]
    near = data["near_duplicates"]
    assert set(near["n_pairs"]) == {"train_pool-val", "train_pool-test", "val-test"}
    assert len(near["pairs"]) == min(50, sum(near["n_pairs"].values()))
    for name in ("split.json", "predictions.json", "samples.png", "closest_pairs.png"):
        assert (path.parent / name).is_file()
    assert Image.open(path.parent / "samples.png").size[0] > 0


def test_split_manifest_keeps_lesions_on_one_side(smoke_run):
    path, _ = smoke_run
    sides = {}
    for row in json.loads((path.parent / "split.json").read_text())["images"]:
        sides.setdefault(row["group"], set()).add(row["split"])
    assert sides and all(len(s) == 1 for s in sides.values())


def test_same_seed_same_metrics_in_a_fresh_folder(smoke_run, tmp_path):
    _, first = smoke_run
    second = json.loads(run(smoke(tmp_path)).read_text())
    for arm in first["arms"]:
        for key in ("auc", "accuracy", "auc_ci95", "balanced_accuracy"):
            assert second["arms"][arm][key] == first["arms"][arm][key]
    assert second["fidelity"]["fid"] == first["fidelity"]["fid"]


def test_a_finished_run_is_reported_never_redone_or_overwritten(smoke_run, monkeypatch):
    path, _ = smoke_run
    before = path.read_bytes()
    monkeypatch.setattr("dermabench.protocol.Run._execute", lambda *a: pytest.fail("a finished run was redone"))
    again = Run(build_config(profile="smoke", out=str(path.parent.parent)))
    assert again.execute() == path and again.already_finished
    assert path.read_bytes() == before


def test_rerun_reuses_generated_images(smoke_run, tmp_path):
    """A second run with the same generator settings into the same folder generates nothing."""
    path, _ = smoke_run
    out = path.parent.parent
    # another run (fewer bootstrap resamples, one arm less) with the same generator settings
    config = build_config(profile="smoke", out=str(out), n_boot=50, arms="real,real+synthetic")
    result = json.loads(run(config).read_text())
    assert result["timings_s"]["generate"] == 0.0
    assert result["timings_s"]["fit_generator"] == 0.0


class Broken(dermabench.Generator):
    name = "broken-test"
    mode = "count"

    def generate(self, prompts, context):
        if self.mode == "count":
            return [Image.new("RGB", (8, 8))] * (len(prompts) - 1)
        if self.mode == "gray":
            return [Image.new("L", (8, 8))] * len(prompts)
        raise RuntimeError("GPU on fire")


@pytest.fixture
def broken_generator():
    class Plugin:
        @dermabench.hookimpl
        def register_generators(self, register):
            register(Broken)

    with registered_plugin(Plugin(), "broken-test"):
        yield Broken
    Broken.mode = "count"


@pytest.mark.parametrize(
    "mode, message",
    [
        ("count", "generator 'broken-test' returned 119 images for 120 prompts"),
        ("gray", "generator 'broken-test' returned a L image for prompt 0; RGB is required"),
        ("raise", "generator 'broken-test' failed in generate\\(\\): RuntimeError: GPU on fire"),
    ],
)
def test_a_plugin_breaking_its_contract_is_named(broken_generator, tmp_path, mode, message):
    broken_generator.mode = mode
    with pytest.raises(PluginError, match=message):
        run(smoke(tmp_path, generator="broken-test"))
    assert not list(tmp_path.rglob("result.json"))


def test_the_load_step_pauses_the_garbage_collector_for_the_datasets_plan_and_its_images(tmp_path):
    # a file dataset's plan makes objects per image as its images do; full collections over torch's heap
    # made a cached HAM10000 load's plan 1.5-2x slower
    import gc

    seen = []

    class Probe(dermabench.Dataset):
        name = "gc-probe"

        def __init__(self, data_dir=None, **options):
            super().__init__(data_dir=data_dir, **options)
            seen.append(("plan", gc.isenabled()))

        def samples(self):
            seen.append(("images", gc.isenabled()))
            for label in (0, 1):
                yield dermabench.Sample(Image.new("RGB", (8, 8)), label)

    class Plugin:
        @dermabench.hookimpl
        def register_datasets(self, register):
            register(Probe)

    with registered_plugin(Plugin(), "gc-probe"):
        samples, _ = Run(smoke(tmp_path)).load("dataset", "gc-probe", None, {})
    assert len(samples) == 2
    assert seen == [("plan", False), ("images", False)] and gc.isenabled()


def test_real_plus_augment_arm(tmp_path):
    result = json.loads(run(smoke(tmp_path, arms="real,real+augment", n_synthetic=40)).read_text())
    arm = result["arms"]["real+augment"]
    assert (arm["n_real"], arm["n_synthetic"]) == (120, 40)
    assert "delta_vs_real" in arm


def test_a_test_dataset_replaces_the_test_split(tmp_path):
    """--test-dataset: train/val come from --dataset, the whole other dataset is the test set."""
    other = {"n": 160, "seed": 11}
    config = smoke(tmp_path, test_dataset="phantom", test_dataset_options=other)
    path = run(config)
    result = json.loads(path.read_text())
    test_images = result["data"]["test_dataset_report"]["n_images"]
    assert result["data"]["n_test"] == test_images == 160
    assert result["data"]["n_train_pool"] + result["data"]["n_val"] == result["data"]["dataset_report"]["n_images"]
    assert {row["split"] for row in json.loads((path.parent / "split.json").read_text())["images"]} == {"train", "val"}
    predictions = json.loads((path.parent / "predictions.json").read_text())
    assert len(predictions["label"]) == 160
    assert result["config"]["test_dataset"] == "phantom" and result["config"]["test_dataset_options"] == other
    assert result["plugins"]["test_dataset"]["name"] == "phantom"
    assert result["arms"]["real"]["n_test"] == 160


def test_a_test_set_too_small_to_say_much_is_warned_about(tmp_path):
    """200 phantom images leave about ten malignant test images: the run finishes, and says so."""
    from in_test_plugins import RecordedProgress

    from dermabench.protocol import MIN_TEST_PER_CLASS

    progress = RecordedProgress()
    path = run(smoke(tmp_path, dataset_options={"n": 200}, generator="augment", arms="real", n_real=60), progress)
    result = json.loads(path.read_text())
    labels = json.loads((path.parent / "predictions.json").read_text())["label"]
    smallest = min(labels.count(0), labels.count(1))
    assert smallest < MIN_TEST_PER_CLASS and result["data"]["n_test"] == len(labels)
    assert [line for line in progress.lines if line.startswith("warning: the test set has only")] == [
        f"warning: the test set has only {smallest} images of one class (of {len(labels)}): its AUC, FID and their "
        f"CIs say little; use a larger dataset (at least {MIN_TEST_PER_CLASS} per class)"
    ]
