"""Nothing lost, nothing redone: stage records, generation shards, --force, the run lock, SIGKILL and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from in_test_plugins import registered_plugin

import dermabench
from dermabench import generation
from dermabench.api import Prompt, RunContext
from dermabench.config import build_config
from dermabench.errors import DermabenchError, PluginError
from dermabench.protocol import Run, run
from dermabench.stages import RunLock, Stages

#: what may differ between an interrupted-and-resumed run and an uninterrupted one
VOLATILE = ("created", "timings_s", "resumed_stages", "environment", "run_id", "git_commit")


def comparable(result: dict) -> dict:
    kept = {key: value for key, value in result.items() if key not in VOLATILE}
    kept["config"] = {key: value for key, value in result["config"].items() if key != "out"}
    return kept


def smoke(out: Path, **flags):
    return build_config(profile="smoke", out=str(out), **flags)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted smoke run."""
    path = run(smoke(tmp_path_factory.mktemp("reference")))
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- stage records


def test_a_stage_record_is_reused_only_for_the_same_inputs(tmp_path):
    stages = Stages(tmp_path)
    assert stages.load("captions", {"images": [1, 2]}) is None
    stages.save("captions", {"images": [1, 2]}, ["a", "b"])
    assert stages.load("captions", {"images": [1, 2]}) == ["a", "b"]
    assert stages.load("captions", {"images": [1, 3]}) is None  # other inputs: recomputed, never trusted
    (tmp_path / "stages" / "captions.json").write_text("{ half written")
    assert stages.load("captions", {"images": [1, 2]}) is None
    assert stages.reused == ["captions"]


def test_an_interrupted_run_resumes_and_ends_with_the_same_result(reference, tmp_path, monkeypatch):
    """The classifier dies in the last arm; the second attempt reuses captions, fidelity and the finished arms."""
    from dermabench_plugins.cnn import CNNClassifier

    calls = []
    original_fit = CNNClassifier.fit

    def dying_fit(self, train, val, context):
        calls.append(len(train))
        if len(calls) == 3:  # real, real+synthetic, then synthetic: killed
            raise KeyboardInterrupt
        return original_fit(self, train, val, context)

    monkeypatch.setattr(CNNClassifier, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        run(smoke(tmp_path))
    assert not list(tmp_path.rglob("result.json"))
    monkeypatch.setattr(CNNClassifier, "fit", original_fit)
    resumed = json.loads(run(smoke(tmp_path)).read_text())
    assert set(resumed["resumed_stages"]) == {
        "near_duplicates", "captions", "fidelity", "arm-real-seed0", "arm-real+synthetic-seed0"
    }
    assert resumed["timings_s"]["generate"] == 0.0
    assert comparable(resumed) == comparable(reference)


def test_force_starts_a_new_run_beside_a_finished_one(tmp_path):
    first = run(smoke(tmp_path, arms="real,synthetic"))
    before = first.read_bytes()
    second = run(smoke(tmp_path, arms="real,synthetic"), force=True)
    assert second.parent.name == first.parent.name + "-2"
    assert first.read_bytes() == before
    one, two = json.loads(first.read_text()), json.loads(second.read_text())
    assert comparable(one) == comparable(two)  # in its own folder, from the same caches


def test_an_interrupted_force_run_resumes_with_the_same_command(tmp_path, monkeypatch):
    """`--force` skips finished and running folders only: the `-2` run, killed before its metrics, resumes."""
    from dermabench import protocol

    config = smoke(tmp_path, arms="real,synthetic")
    first = run(config)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    original = protocol.evaluate_arms
    monkeypatch.setattr(protocol, "evaluate_arms", killed)
    with pytest.raises(KeyboardInterrupt):
        run(config, force=True)
    interrupted = first.parent.parent / (first.parent.name + "-2")
    assert interrupted.is_dir() and not (interrupted / "result.json").exists()
    monkeypatch.setattr(protocol, "evaluate_arms", original)
    resumed = run(config, force=True)
    assert resumed.parent == interrupted
    assert "near_duplicates" in json.loads(resumed.read_text())["resumed_stages"]  # a record of its own folder
    with RunLock(first.parent.parent / (first.parent.name + "-3")):  # running: --force goes beside it
        assert run(config, force=True).parent.name == first.parent.name + "-4"


def test_another_run_over_the_same_images_reuses_the_classifier_fits_and_nothing_else(tmp_path, monkeypatch):
    """`--force` or more seeds: arm × seed fits that another run finished come from <out>/.cache/arms; a changed
    classifier option, seed or generator trains again."""
    from dermabench_plugins.cnn import CNNClassifier

    first = json.loads(run(smoke(tmp_path, generator="augment", arms="real,synthetic")).read_text())
    fits = []
    original_fit = CNNClassifier.fit
    monkeypatch.setattr(CNNClassifier, "fit", lambda self, *a: fits.append(self.config["epochs"]) or original_fit(self, *a))
    again = json.loads(run(smoke(tmp_path, generator="augment", arms="real,synthetic"), force=True).read_text())
    assert fits == [] and comparable(again) == comparable(first)
    more_seeds = json.loads(run(smoke(tmp_path, generator="augment", arms="real,synthetic", seeds=2)).read_text())
    assert len(fits) == 2  # seed 1 of both arms; seed 0 from the cache
    assert more_seeds["arms"]["real"]["auc"] != first["arms"]["real"]["auc"]  # a mean over two seeds now
    run(smoke(tmp_path, generator="augment", arms="real,synthetic", classifier_options={"epochs": "2"}))
    assert fits[2:] == [2, 2]
    # another generator's images: the synthetic arm trains again; `real` does not depend on the generator,
    # so every generator's row is compared with the very same real baseline
    run(smoke(tmp_path, generator="augment", arms="real,synthetic", generator_options={"jitter": "0.1"}))
    assert len(fits) == 5


class ChangingPhantom(dermabench.Dataset):
    """The phantom dataset, whose pixels or labels a test changes under the same image ids and options."""

    name = "changing-phantom"
    change = "none"

    def __init__(self, data_dir=None, **options):
        from dermabench_plugins.phantom import PhantomDataset

        self.phantom = PhantomDataset(**options)

    def samples(self):
        for sample in self.phantom.samples():
            if ChangingPhantom.change == "pixels":
                sample = replace(sample, image=ImageOps.mirror(sample.image))
            elif ChangingPhantom.change == "lesions":
                sample = replace(sample, meta={**sample.meta, "lesion_id": f"fixed-{sample.meta['image_id']}"})
            yield sample


@pytest.fixture
def changing_phantom():
    class Plugin:
        @dermabench.hookimpl
        def register_datasets(self, register):
            register(ChangingPhantom)

    with registered_plugin(Plugin(), "changing-phantom-test"):
        yield ChangingPhantom
    ChangingPhantom.change = "none"


def test_data_changed_under_the_same_image_ids_is_computed_again(changing_phantom, tmp_path, monkeypatch):
    """Caches are keyed by what the data holds: new pixels or lesion ids under the same ids and options miss
    every shared cache (split, captions, generated images, fidelity, classifier fits) instead of reusing them."""
    from dermabench import plugins, protocol
    from dermabench_plugins.cnn import CNNClassifier

    config = smoke(tmp_path, dataset="changing-phantom", dataset_options={"n": 500}, generator="augment",
                   arms="real,synthetic")  # fmt: skip
    first = json.loads(run(config).read_text())
    calls = []
    captioner = plugins.get("captioner", config.captioner).cls
    caption, fidelity, fit = captioner.caption, protocol.fidelity_and_memorization, CNNClassifier.fit
    monkeypatch.setattr(captioner, "caption", lambda self, *a: calls.append("captions") or caption(self, *a))
    monkeypatch.setattr(protocol, "fidelity_and_memorization", lambda *a, **k: calls.append("fidelity") or fidelity(*a, **k))
    monkeypatch.setattr(CNNClassifier, "fit", lambda self, *a: calls.append("fit") or fit(self, *a))
    run(config, force=True)
    assert calls == []  # the same data: everything from the caches
    changing_phantom.change = "pixels"
    mirrored = json.loads(run(config, force=True).read_text())
    assert calls == ["captions", "fidelity", "fit", "fit"]
    assert mirrored["fidelity"]["fid"] != first["fidelity"]["fid"]
    changing_phantom.change = "lesions"  # every image its own lesion now: a new split, not the old manifest
    calls.clear()
    regrouped = run(config, force=True)
    assert calls == ["captions", "fidelity", "fit", "fit"]
    manifest = json.loads((regrouped.parent / "split.json").read_text())["images"]
    assert {row["group"] for row in manifest} == {f"lesion_id:fixed-{row['image_id']}" for row in manifest}


def test_a_test_image_identical_to_a_training_image_is_left_out(tmp_path):
    """A test dataset that overlaps the training dataset: its pixel-for-pixel copies of train/val images are not
    scored (phantom with n=500 and n=560 and one seed: the first 500 images are the same)."""
    result = json.loads(run(smoke(tmp_path, test_dataset="phantom", test_dataset_options={"n": 560},
                                  arms="real", generator="augment")).read_text())  # fmt: skip
    removed = result["data"]["test_copies_removed"]
    assert removed == 500 and result["data"]["n_test"] == 60


def test_force_reads_captions_and_fidelity_that_another_run_computed(tmp_path, monkeypatch):
    """<out>/.cache/stages: a --force re-run captions nothing and computes no fidelity metric, yet writes the same
    result and its own grids; a run with another seed computes both again."""
    from dermabench import plugins, protocol

    config = smoke(tmp_path, generator="augment", arms="real,synthetic")
    first = json.loads(run(config).read_text())
    calls = []
    captioner = plugins.get("captioner", config.captioner).cls
    caption, fidelity = captioner.caption, protocol.fidelity_and_memorization
    monkeypatch.setattr(captioner, "caption", lambda self, *a: calls.append("captions") or caption(self, *a))
    monkeypatch.setattr(protocol, "fidelity_and_memorization", lambda *a, **k: calls.append("fidelity") or fidelity(*a, **k))
    again = run(smoke(tmp_path, generator="augment", arms="real,synthetic"), force=True)
    assert calls == [] and comparable(json.loads(again.read_text())) == comparable(first)
    assert (again.parent / "samples.png").is_file() and (again.parent / "closest_pairs.png").is_file()
    run(smoke(tmp_path, generator="augment", arms="real,synthetic", seed=1))
    assert calls == ["captions", "fidelity"]


def test_options_spelled_as_on_the_command_line_find_the_same_caches(tmp_path, monkeypatch):
    """`--dataset-opt n=500 --classifier-opt epochs=3` (strings) is the smoke profile's n = 500, epochs = 3: a
    --force run spelled so captions nothing, computes no fidelity and fits no classifier."""
    from dermabench import protocol
    from dermabench_plugins.abcd_captioner import ABCDCaptioner
    from dermabench_plugins.cnn import CNNClassifier

    first = json.loads(run(smoke(tmp_path, generator="augment", arms="real,synthetic")).read_text())
    calls = []
    monkeypatch.setattr(ABCDCaptioner, "caption", lambda *a: calls.append("captions"))
    monkeypatch.setattr(protocol, "fidelity_and_memorization", lambda *a, **k: calls.append("fidelity"))
    monkeypatch.setattr(CNNClassifier, "fit", lambda *a: calls.append("fit"))
    spelled = smoke(tmp_path, generator="augment", arms="real,synthetic", dataset_options={"n": "500"},
                    classifier_options={"epochs": "3"})  # fmt: skip
    again = json.loads(run(spelled, force=True).read_text())
    assert calls == []
    assert again["arms"]["synthetic"]["auc"] == first["arms"]["synthetic"]["auc"]
    assert again["fidelity"]["fid"] == first["fidelity"]["fid"]


def test_a_run_in_progress_is_locked(tmp_path):
    config = smoke(tmp_path)
    busy = Run(config)
    with RunLock(busy.run_dir), pytest.raises(DermabenchError, match=r"is in progress in process \d+"):
        Run(config).execute()
    assert not list(tmp_path.rglob("result.json"))


# --------------------------------------------------------------------------- generation shards


class Counting(dermabench.Generator):
    """A per-prompt generator (an image is its seed) that can be told to die after some calls."""

    name = "counting"

    def __init__(self, die_after: int | None = None):
        super().__init__()
        self.calls: list[int] = []
        self.die_after = die_after

    def generate(self, prompts, context):
        if self.die_after is not None and len(self.calls) == self.die_after:
            raise RuntimeError("killed")
        self.calls.append(len(prompts))
        return [Image.new("RGB", (8, 8), (p.seed % 256, p.label * 200, 7)) for p in prompts]


def test_generation_resumes_at_the_first_missing_shard(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "SHARD_SIZE", 4)
    prompts = [Prompt(f"p{i}", i % 2, 1000 + i) for i in range(10)]
    context = RunContext(image_size=8, work_dir=tmp_path)
    path = tmp_path / "images.npz"
    with pytest.raises(PluginError, match="killed"):
        generation.generate_and_store(Counting(die_after=2), prompts, context, path)
    assert generation.pending_shards(path, len(prompts), Counting()) == 1 and not path.exists()
    resumed = Counting()
    images = generation.generate_and_store(resumed, prompts, context, path)
    assert resumed.calls == [2]  # only the last shard (prompts 8 and 9)
    whole = generation.generate_and_store(Counting(), prompts, context, tmp_path / "whole.npz")
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in whole]
    assert not list(tmp_path.glob("*.shard*"))  # shards are removed once the set is stored


def test_a_generator_that_deals_images_in_order_gets_one_call(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "SHARD_SIZE", 4)

    class InOrder(Counting):
        per_prompt = False

    generator = InOrder()
    generation.generate_and_store(generator, [Prompt("p", 0, i) for i in range(10)], RunContext(image_size=8),
                                  tmp_path / "x.npz")  # fmt: skip
    assert generator.calls == [10]


# --------------------------------------------------------------------------- SIGKILL, resume, two runs at once


def dermabench_run(out: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "dermabench", "run", "--profile", "smoke", "--generator", "augment",
               "--out", str(out), *flags]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def kill_when(out: Path, marker: str) -> str:
    """Start a smoke run, SIGKILL it as soon as it prints `marker`; returns what it printed."""
    process = dermabench_run(out, "--verbose")
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=600)
    rest = process.stdout.read()
    assert process.returncode == -signal.SIGKILL, "".join(seen) + rest
    return "".join(seen)


def test_sigkill_at_several_stages_then_resume_equals_an_uninterrupted_run(tmp_path):
    # the reference runs the same way (a process with one thread): classifiers are bit-identical per thread count
    uninterrupted = dermabench_run(tmp_path / "reference")
    output, _ = uninterrupted.communicate(timeout=900)
    assert uninterrupted.returncode == 0, output
    [path] = (tmp_path / "reference").rglob("result.json")
    reference = json.loads(path.read_text())
    out = tmp_path / "results"
    kill_when(out, "step: captions")  # loaded and split
    kill_when(out, "step: fidelity")  # captioned, generated
    log = kill_when(out, "arm real+synthetic, seed 0")  # fidelity and the real arm done
    assert "resuming run" in log
    finished = dermabench_run(out)
    output, _ = finished.communicate(timeout=900)
    assert finished.returncode == 0, output
    [path] = out.rglob("result.json")
    resumed = json.loads(path.read_text())
    assert {"captions", "fidelity", "arm-real-seed0"} <= set(resumed["resumed_stages"])
    assert comparable(resumed) == comparable(reference)


def test_two_runs_into_one_folder_at_once_both_finish(tmp_path):
    out = tmp_path / "results"
    runs = [dermabench_run(out, "--seed", str(seed), "--arms", "real,synthetic", "--quiet") for seed in (1, 2)]
    outputs = [process.communicate(timeout=900)[0] for process in runs]
    assert [process.returncode for process in runs] == [0, 0], outputs
    results = [json.loads(path.read_text()) for path in sorted(out.rglob("result.json"))]
    assert sorted(r["config"]["seed"] for r in results) == [1, 2]
