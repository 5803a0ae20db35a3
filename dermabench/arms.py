"""The classifier arms (DESIGN step 7): what each arm trains on, and training every arm × seed.

Every arm trains the same classifier configuration, is selected on the same real
validation set and is evaluated on the same real test set; only the training
images differ. The real images are one fixed, class-stratified subset of the train
pool, shared by every arm that uses real images, so differences between arms come
from what is added, not from which real images were drawn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dermabench.api import Prompt, Sample
from dermabench.config import canonical_options
from dermabench.errors import DermabenchError, PluginError
from dermabench.generation import check_images, plugin_call
from dermabench.results import write_json_atomic
from dermabench.seeding import derive_seed
from dermabench.stages import inputs_hash

if TYPE_CHECKING:
    from dermabench.protocol import Run


def real_subset(train_pool: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """`n` train-pool images with the pool's class balance, drawn once for every arm."""
    if n >= len(train_pool):
        return list(train_pool)
    rng = np.random.default_rng(derive_seed(seed, "real-subset"))
    labels = np.array([s.label for s in train_pool])
    n_malignant = round(n * labels.mean())
    chosen = []
    for label, count in ((1, n_malignant), (0, n - n_malignant)):
        members = np.flatnonzero(labels == label)
        chosen += rng.choice(members, size=min(count, len(members)), replace=False).tolist()
    return [train_pool[i] for i in sorted(chosen)]


def augmented(run: Run, real: Sequence[Sample], prompts: Sequence[Prompt]) -> list[Sample]:
    """The `real+augment` baseline's extra images: classical augmentation of the arm's real images."""
    generator = run.instantiate("generator", "augment", {}, slot="augment_baseline")
    context = run.context("generator", "augment", {})
    with plugin_call("generator", "augment", "fit"):
        generator.fit(real, context)
    with plugin_call("generator", "augment", "generate"):
        images = list(generator.generate(prompts, context))
    images = check_images(images, prompts, "augment", run.config.image_size)
    return [
        Sample(image=image, label=p.label, meta={"image_id": f"augment-{i}", "synthetic": True})
        for i, (image, p) in enumerate(zip(images, prompts))
    ]


def build_arms(run: Run, train_pool: Sequence[Sample], synthetic: Sequence[Sample]) -> dict[str, list[Sample]]:
    config = run.config
    real = real_subset(train_pool, config.n_real, config.seed)
    if len(real) < config.n_real:
        run.progress.log(
            f"warning: --n-real {config.n_real} is more than the train pool's {len(real)} images; the arms use "
            f"all {len(real)} (each arm's n_real in the result says so)"
        )
    arms: dict[str, list[Sample]] = {}
    for arm in config.arms:
        if arm == "real":
            arms[arm] = real
        elif arm == "real+synthetic":
            arms[arm] = real + list(synthetic)
        elif arm == "synthetic":
            arms[arm] = list(synthetic)
        elif arm == "real+augment":
            prompts = [Prompt(s.caption, s.label, s.meta["prompt_seed"]) for s in synthetic]
            arms[arm] = real + augmented(run, real, prompts)
    # images keep their captions; classifiers get plain labelled samples
    return {arm: [replace(s, caption="") for s in samples] for arm, samples in arms.items()}


def _uses_synthetic(train: Sequence[Sample]) -> bool:
    return any(s.meta.get("synthetic") for s in train)


def check_probabilities(p: object, n: int, name: str) -> np.ndarray:
    try:
        array = np.asarray(p, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"classifier '{name}' returned probabilities that are not numbers: {exc}") from exc
    if array.shape != (n,):
        raise PluginError(f"classifier '{name}' returned {array.size} probabilities for {n} test images")
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
        raise PluginError(f"classifier '{name}' returned probabilities outside [0, 1] or not finite")
    return array


def shared_record(run: Run, inputs: dict, seed: int) -> Path:
    """Where one arm × seed's test probabilities are kept across runs. Besides the stage's inputs (classifier
    plugin and version, options, image size, the train/val/test image ids and, for arms with synthetic images,
    the synthetic images' cache key, which pins the generator, the prompts and the image size), the key holds
    what a run folder implies and the data's fingerprint (`Run.shared_identity`) with this arm's seed."""
    key = inputs_hash({**inputs, **run.shared_identity(), "seed": seed})
    return run.cache / "arms" / f"{run.config.classifier}-{key}.json"


def load_shared(path: Path, n_test: int) -> np.ndarray | None:
    try:
        stored = np.asarray(json.loads(path.read_text())["probabilities"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or damaged: trained again, never trusted
    return stored if stored.shape == (n_test,) else None


def train_arms(
    run: Run,
    arms: dict[str, list[Sample]],
    val: Sequence[Sample],
    test: Sequence[Sample],
    seeds: Sequence[int],
    stage_inputs: dict | None = None,
) -> dict[str, list[np.ndarray]]:
    """Train a fresh classifier per arm and seed; return P(malignant) on the test set per arm and seed.

    Seed k initialises the classifier identically in every arm, so per-seed
    differences between arms are paired. Each arm × seed is a stage of the run: a
    resumed run reuses the probabilities of those that finished. They are also kept
    in `<out>/.cache/arms/`, keyed by everything the fit depends on, so another run
    over the same images and settings (`--force`, more seeds) trains only what is new.
    """
    config = run.config
    options = dict(config.classifier_options)
    test_images = [s.image for s in test]
    jobs = [(arm, seed) for arm in arms for seed in seeds]
    run.instantiate("classifier", config.classifier, options)  # records the plugin; cheap: models build in fit
    common = {**(stage_inputs or {}), "classifier": run.plugin_info["classifier"], "options": canonical_options(options),
              "image_size": config.image_size}  # fmt: skip
    # an arm without synthetic images (`real`) does not depend on the generator: every generator's run over the
    # same split shares its records, so all of them are compared with the very same `real` baseline
    inputs = {
        (arm, seed): {
            **{k: v for k, v in common.items() if k != "synthetic" or _uses_synthetic(arms[arm])},
            "train": [s.meta["image_id"] for s in arms[arm]],
        }
        for arm, seed in jobs
    }
    probabilities: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    # with several processes, each trains its share of the jobs and they meet in the stage records
    for arm, seed in run.processes.mine(jobs):
        train = arms[arm]
        if run.stages.load(f"arm-{arm}-seed{seed}", inputs[arm, seed]) is None:
            shared = shared_record(run, inputs[arm, seed], seed)
            p = load_shared(shared, len(test_images))
            if p is not None:
                run.progress.log(f"arm {arm}, seed {seed}: test probabilities from the cache")
            else:
                run.progress.log(f"arm {arm}, seed {seed}: {len(train)} training images")
                classifier = run.instantiate("classifier", config.classifier, options)
                safe_arm = arm.replace("+", "-")
                context = run.context(f"classifier-{safe_arm}-seed{seed}", config.classifier, options, seed=seed)
                with plugin_call("classifier", config.classifier, "fit"):
                    classifier.fit(train, val, context)
                with plugin_call("classifier", config.classifier, "predict_proba"):
                    p = classifier.predict_proba(test_images, context)
                p = check_probabilities(p, len(test_images), config.classifier)
                write_json_atomic(shared, {"probabilities": p.tolist()})
            run.stages.save(f"arm-{arm}-seed{seed}", inputs[arm, seed], p.tolist())
    run.processes.wait()
    for arm, seed in jobs:
        stored = run.stages.load(f"arm-{arm}-seed{seed}", inputs[arm, seed], reuse=False)
        if stored is None:
            raise DermabenchError(f"the classifier of arm {arm}, seed {seed} left no record in {run.stages.folder}")
        probabilities[arm].append(np.asarray(stored, dtype=np.float64))
    return probabilities
