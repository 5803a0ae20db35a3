"""The real-vs-synthetic protocol (DESIGN.md steps 1–9), in host code. Plugins never call it.

load → split → caption → generator.fit → generate → fidelity → classifier per arm
and seed → metrics → result JSON. A change to what it computes bumps
PROTOCOL["version"] in results.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import dermabench
from dermabench import plugins
from dermabench.api import LABEL_NAMES, Generator, Plugin, Progress, RunContext, Sample
from dermabench.arms import build_arms, train_arms
from dermabench.config import RunConfig, canonical_options
from dermabench.errors import DermabenchError, storage_errors
from dermabench.fidelity_step import closest_rows, fidelity_and_memorization
from dermabench import generation
from dermabench.generation import plugin_call
from dermabench.grids import save_grid
from dermabench.image_cache import ImageCache
from dermabench.images import RESIZE_METHOD, collector_paused, normalise_samples
from dermabench.metrics.classification import evaluate_arms
from dermabench.metrics.subgroups import evaluate_subgroups
from dermabench.near_duplicates import find_near_duplicates
from dermabench.prompts import class_counts, make_prompts
from dermabench.data_fingerprint import copies_of, data_fingerprint, image_digest
from dermabench.results import PROTOCOL, RESULT_FILE, SCHEMA_VERSION, environment, git_commit, write_json_atomic
from dermabench.splits import group_of, load_or_make_split
from dermabench.processes import Processes
from dermabench.processes import current as current_processes
from dermabench.stages import RunLock, Stages


#: below this many test images of a class, a run warns that its figures say little
MIN_TEST_PER_CLASS = 20


def resolve_device(device: str, processes: Processes | None = None) -> str:
    if device != "auto":
        return device
    if processes is not None and processes.device:
        return processes.device  # each process its own GPU
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def options_hash(options: dict) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Run:
    """One run of the protocol for one RunConfig, writing into `<out>/<run_id>/`."""

    def __init__(self, config: RunConfig, progress: Progress | None = None, force: bool = False) -> None:
        self.config = config
        #: the processes this run is spread over (one, unless launched by accelerate/torchrun)
        self.processes = current_processes()
        # one voice: only process 0 reports progress
        self.progress = (progress or Progress()) if self.processes.main else Progress()
        self.device = resolve_device(config.device, self.processes)
        self.out = Path(config.out)
        self.cache = self.out / ".cache"
        self.run_id = f"{config.dataset}_{config.generator}_{config.classifier}_{config.profile}_{config.fingerprint()}"
        if force:
            self.run_id = self._beside_finished_and_running(self.run_id)
        self.run_dir = self.out / self.run_id
        #: part of the key of every stage record and every cache other runs may reuse; `_execute` adds the
        #: data's fingerprint once it is loaded
        self.identity = self._identity()
        self.stages = Stages(self.run_dir, shared=self.cache / "stages", identity=self.identity)
        #: True when execute() found the run finished before and only reported it
        self.already_finished = False
        self.timings: dict[str, float] = dict.fromkeys(("fit_generator", "generate", "fidelity", "classify"), 0.0)
        self.plugin_info: dict[str, dict[str, str]] = {}

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _beside_finished_and_running(self, base: str) -> str:
        """`--force`: the first of <run_id>, <run_id>-2, -3, ... that is neither finished nor running.

        An interrupted `--force` run is that first one, so the same command resumes it rather than
        starting over in yet another folder.
        """
        run_id, number = base, 2
        while (self.out / run_id / RESULT_FILE).exists() or RunLock.held(self.out / run_id):
            run_id, number = f"{base}-{number}", number + 1
        # every process must settle on one folder before process 0 takes its lock
        self.processes.wait()
        return run_id

    def _identity(self) -> dict[str, Any]:
        config = self.config
        return {
            # the device's kind, not its index: the processes of one run (cuda:0, cuda:1, ...) share records
            "seed": config.seed, "profile": config.profile, "device": self.device.split(":")[0],
            "image_size": config.image_size,
            "dataset": [config.dataset, canonical_options(config.dataset_options), config.data_dir],
            "test_dataset": [config.test_dataset, canonical_options(config.test_dataset_options), config.test_data_dir],
            "dermabench": dermabench.__version__, "protocol": PROTOCOL["version"],
        }  # fmt: skip

    def shared_identity(self) -> dict[str, Any]:
        """What a run folder implies beyond a stage's own inputs, and the fingerprint of the data once loaded:
        part of the key of every record that other runs may reuse (`<out>/.cache/stages`, `<out>/.cache/arms`)."""
        return dict(self.identity)

    def context(self, kind: str, name: str, options: dict, **overrides: Any) -> RunContext:
        work_dir = self.cache / "plugins" / f"{kind}-{name}-{options_hash(canonical_options(options))}"
        work_dir.mkdir(parents=True, exist_ok=True)
        base = dict(
            device=self.device,
            image_size=self.config.image_size,
            seed=self.config.seed,
            work_dir=work_dir,
            profile=self.config.profile,
            progress=self.progress,
        )
        return RunContext(**{**base, **overrides})

    def instantiate(self, kind: str, name: str, options: dict, slot: str | None = None, **kwargs: Any) -> Plugin:
        registered = plugins.get(kind, name)
        self.plugin_info[slot or kind] = {"name": name, "plugin": registered.plugin, "version": registered.version}
        with plugin_call(kind, name, "__init__"):
            return registered.cls(**kwargs, **options)

    def timed(self, step: str):
        run = self

        class _Timer:
            def __enter__(self):
                self.start = time.perf_counter()
                run.progress.log(f"step: {step}")

            def __exit__(self, *exc):
                run.timings[step] = run.timings.get(step, 0.0) + time.perf_counter() - self.start

        return _Timer()

    # -- the protocol ---------------------------------------------------------------------------------------------

    def load(self, kind_slot: str, name: str, data_dir: str | None, options: dict) -> tuple[list[Sample], dict]:
        with collector_paused():  # a file dataset's plan makes an object or more per image, too
            dataset = self.instantiate("dataset", name, options, slot=kind_slot, data_dir=data_dir)
        image_cache = None
        if hasattr(dataset, "use_image_cache"):  # file-based datasets: decode each file once per image size
            image_cache = ImageCache(self.cache / "images", self.config.image_size)
            dataset.use_image_cache(image_cache)
        with plugin_call("dataset", name, "samples"):
            raw = dataset.samples()
            samples, report = normalise_samples(
                self.progress.track(raw, f"loading {name}"), self.config.image_size, source=name
            )
        if not samples:
            raise DermabenchError(f"dataset '{name}' yielded no usable images")
        for label, label_name in LABEL_NAMES.items():
            if report.labels[label] == 0:
                raise DermabenchError(f"dataset '{name}' has no {label_name} images")
        summary = report.to_dict()
        if image_cache is not None:
            self.progress.log(f"{name}: {image_cache.hits} images from the image cache, {image_cache.misses} decoded")
        plugin_report = getattr(dataset, "report", None)
        if isinstance(plugin_report, dict):
            # files the plugin itself could not read count as rejected too
            summary["plugin_report"] = plugin_report
            summary["rejected_images"] += len(plugin_report.get("undecodable") or [])
        self.progress.log(
            f"{name}: {summary['n_images']} images ({summary['labels']}), "
            f"{summary['converted_images']} converted to RGB, {summary['rejected_images']} rejected"
        )
        return samples, summary

    def execute(self) -> Path:
        """Run every unfinished step and write the result; returns the result file's path.

        A finished run is reported, not redone; an unfinished one resumes from its stage records. A full,
        read-only or forbidden disk ends it with a StorageError naming the file; everything finished is kept.
        """
        result_path = self.run_dir / RESULT_FILE
        with storage_errors(during=f"the run wrote into {self.run_dir}"):
            if not result_path.exists():
                if not self.processes.main:  # process 0 holds the lock for the group
                    return self._execute(result_path)
                with RunLock(self.run_dir):
                    if not result_path.exists():  # another process may have finished it while we waited
                        return self._execute(result_path)
        self.already_finished = True
        self.progress.log(f"run {self.run_id} already finished: {result_path} (--force starts a new run beside it)")
        return result_path

    def _execute(self, result_path: Path) -> Path:
        config = self.config
        if self.stages.folder.is_dir():
            self.progress.log(f"resuming run {self.run_id}")
        start = time.perf_counter()
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")

        # 1. load and validate
        with self.timed("load"):
            samples, data_report = self.load("dataset", config.dataset, config.data_dir, dict(config.dataset_options))
            test_samples = None
            if config.test_dataset:
                test_samples, test_report = self.load(
                    "test_dataset", config.test_dataset, config.test_data_dir, dict(config.test_dataset_options)
                )

            # every cache is keyed by what the data holds, not only by its image ids (data_fingerprint.py)
            digests = [image_digest(s.image) for s in samples]
            self.identity["data"] = data_fingerprint(samples, digests)
            if test_samples is not None:
                test_digests = [image_digest(s.image) for s in test_samples]
                self.identity["test_data"] = data_fingerprint(test_samples, test_digests)

        # 2. grouped, stratified split, saved as a manifest and reused
        with self.timed("split"):
            split_key = options_hash(
                {
                    "data": self.identity["data"],
                    "dataset": config.dataset,
                    "options": canonical_options(config.dataset_options),
                    "data_dir": str(Path(config.data_dir).resolve()) if config.data_dir else None,
                    "seed": config.seed,
                    "val": config.val_fraction,
                    "test": config.test_fraction,
                    "with_test": test_samples is None,
                }
            )
            split = load_or_make_split(
                self.cache / "splits" / f"{config.dataset}-{split_key}.json",
                samples,
                config.seed,
                config.val_fraction,
                config.test_fraction,
                with_test=test_samples is None,
            )
            write_json_atomic(self.run_dir / "split.json", split.to_manifest([s.label for s in samples]))
            split_facts = split.describe()
            self.warn_about_leaks(split_facts)
            train_pool = [samples[i] for i in split.indices("train")]
            val = [samples[i] for i in split.indices("val")]
            if test_samples is None:
                held_out = split.indices("test")
                candidates, test_digests = [samples[i] for i in held_out], [digests[i] for i in held_out]
            else:
                candidates = test_samples
            # a test image identical to one the classifier or generator may train on measures nothing
            seen = [digests[i] for name in ("train", "val") for i in split.indices(name)]
            copies = set(copies_of(test_digests, seen))
            test = [s for i, s in enumerate(candidates) if i not in copies]
            if copies:
                first = candidates[min(copies)].meta["image_id"]
                self.progress.log(
                    f"warning: {len(copies)} test image(s) are pixel-for-pixel copies of train/validation images "
                    f"(first: {first}); they are left out of the test set"
                )
            test_groups = [group_of(s, i) for i, s in enumerate(test)]
            parts = {"train_pool": train_pool, "val": val, "test": test}
            ids = {name: [s.meta["image_id"] for s in part] for name, part in parts.items()}
            near_inputs = {"ids": ids, "image_size": config.image_size}
            near_duplicates = self.stages.load("near_duplicates", near_inputs)
            if near_duplicates is None:  # tens of seconds on HAM10000: a resumed run reuses it
                near_duplicates = self.stages.save(
                    "near_duplicates",
                    near_inputs,
                    find_near_duplicates({name: [s.image for s in part] for name, part in parts.items()}, ids),
                )
            if any(near_duplicates["n_pairs"].values()):
                self.progress.log(
                    f"warning: near-duplicate images on two sides of the split: {near_duplicates['n_pairs']} "
                    "(listed in the result's data.near_duplicates)"
                )
            for name, part in (("validation", val), ("test", test)):
                if len({s.label for s in part}) < 2:
                    raise DermabenchError(f"the {name} set has a single class; the dataset is too small to evaluate")
            smallest = min(sum(s.label == label for s in test) for label in LABEL_NAMES)
            if smallest < MIN_TEST_PER_CLASS:
                self.progress.log(
                    f"warning: the test set has only {smallest} images of one class (of {len(test)}): its AUC, "
                    f"FID and their CIs say little; use a larger dataset (at least {MIN_TEST_PER_CLASS} per class)"
                )

        generator_options = dict(config.generator_options)
        generator = self.instantiate("generator", config.generator, generator_options)
        self.check_available_images(generator, class_counts(config.n_synthetic, train_pool, config.prompt_balance))

        # 3. captions for the train pool
        with self.timed("captions"):
            captioner = self.instantiate("captioner", config.captioner, dict(config.captioner_options))
            caption_inputs = {"captioner": self.plugin_info["captioner"], "options": canonical_options(config.captioner_options),
                              "images": [s.meta["image_id"] for s in train_pool]}  # fmt: skip
            captions = self.stages.load("captions", caption_inputs, shared=True)
            if captions is None:
                with plugin_call("captioner", config.captioner, "caption"):
                    captions = list(captioner.caption(train_pool, self.context("captioner", config.captioner, {})))
                if len(captions) != len(train_pool):
                    raise DermabenchError(f"captioner '{config.captioner}' returned {len(captions)} captions")
                self.stages.save("captions", caption_inputs, captions, shared=True)
            elif "captions" in self.stages.shared_hits:
                self.progress.log(f"{len(captions)} captions from the cache")
            train_pool = [replace(s, caption=c) for s, c in zip(train_pool, captions)]

        # 4–5. fit the generator on the train pool, then generate from prompts
        generator_context = self.context("generator", config.generator, generator_options)
        prompts = make_prompts(train_pool, config.n_synthetic, config.seed, config.prompt_balance)
        key_parts = {
            "data": self.identity["data"],
            # a generator's fit depends on the profile (its training budget) and the device (bf16 on a GPU)
            "profile": config.profile,
            "device": self.device.split(":")[0],
            "generator": config.generator,
            "version": self.plugin_info["generator"]["version"],
            "options": canonical_options(generator_options),
            "dermabench": dermabench.__version__,
            "dataset": [config.dataset, canonical_options(config.dataset_options), config.data_dir],
            "train_pool": sorted(s.meta["image_id"] for s in train_pool),
        }
        cached_at = generation.cache_path(generator, prompts, generator_context, self.cache / "generated", key_parts)
        self.processes.wait()  # every process decides on the same cache state
        images = generation.load_cached(cached_at)
        if images is not None:
            # fitting only serves generation; with every image cached there is nothing to fit for
            self.progress.log(f"{len(images)} synthetic images from the cache")
        else:
            pending = generation.pending_shards(cached_at, len(prompts), generator)
            total = len(generation.shard_paths(cached_at, len(prompts), generator))
            if pending < total:
                self.progress.log(f"generation resumes: {total - pending} of {total} shards are done")
            with self.timed("fit_generator"):
                # every process fits, together: a generator that trains data-parallel (dermaflux, sd15 through
                # accelerate) needs all of them; the others fit deterministically or reuse the shared work_dir
                with plugin_call("generator", config.generator, "fit"):
                    generator.fit(train_pool, generator_context)
                self.processes.wait()
            with self.timed("generate"):
                images = generation.generate_and_store(
                    generator, prompts, generator_context, cached_at, self.processes
                )
        synthetic = [
            Sample(
                image=image,
                label=p.label,
                caption=p.text,
                meta={"image_id": f"synthetic-{i}", "synthetic": True, "prompt_seed": p.seed},
            )
            for i, (image, p) in enumerate(zip(images, prompts))
        ]

        if not self.processes.main:  # the rest is process 0's, but for its share of the arms
            arms = build_arms(self, train_pool, synthetic)
            stage_inputs = {"val": [s.meta["image_id"] for s in val], "test": [s.meta["image_id"] for s in test],
                            "synthetic": cached_at.name}  # fmt: skip
            seeds = list(range(config.seed, config.seed + config.seeds))
            train_arms(self, arms, val, test, seeds, stage_inputs)
            self.processes.wait()  # until process 0 wrote the result
            return result_path

        # 6. fidelity and memorization
        with self.timed("fidelity"):
            extractor_options = dict(config.extractor_options)
            extractor = self.instantiate("extractor", config.extractor, extractor_options)
            extractor_context = self.context("extractor", config.extractor, extractor_options)
            fidelity_inputs = {"extractor": self.plugin_info["extractor"], "options": canonical_options(extractor_options),
                               "train_pool": [s.meta["image_id"] for s in train_pool],
                               "val": [s.meta["image_id"] for s in val],
                               "test": [s.meta["image_id"] for s in test], "synthetic": cached_at.name}  # fmt: skip
            stored = self.stages.load("fidelity", fidelity_inputs, shared=True)
            if stored is None or "closest" not in stored:
                fidelity, memorization, closest = fidelity_and_memorization(
                    extractor, extractor_context, train_pool, test, synthetic, config.seed, self.progress,
                    cache_dir=self.cache / "features", val=val,
                )
                fidelity["resize"] = RESIZE_METHOD
                stored = self.stages.save("fidelity", fidelity_inputs,
                                          {"fidelity": fidelity, "memorization": memorization, "closest": closest},
                                          shared=True)
            elif "fidelity" in self.stages.shared_hits:
                self.progress.log(f"FID {stored['fidelity']['fid']:.3f} and the other fidelity figures from the cache")
            fidelity, memorization = stored["fidelity"], stored["memorization"]
            if not (self.run_dir / "samples.png").is_file():
                self.save_grids(train_pool, synthetic, closest_rows(stored["closest"], synthetic, train_pool))

        # 7. arms × seeds, one shared real test set
        with self.timed("classify"):
            arms = build_arms(self, train_pool, synthetic)
            seeds = list(range(config.seed, config.seed + config.seeds))
            stage_inputs = {"val": [s.meta["image_id"] for s in val], "test": [s.meta["image_id"] for s in test],
                            "synthetic": cached_at.name}  # fmt: skip
            probabilities = train_arms(self, arms, val, test, seeds, stage_inputs)

        # 8. metrics with lesion-grouped bootstrap CIs and paired deltas vs `real`
        with self.timed("metrics"):
            y_test = np.array([s.label for s in test])
            arm_metrics = evaluate_arms(
                y_test, test_groups, probabilities, reference="real", n_boot=config.n_boot, seed=config.seed
            )
            for arm, train_set in arms.items():
                arm_metrics[arm] = {
                    "n_real": sum(1 for s in train_set if not s.meta.get("synthetic")),
                    "n_synthetic": sum(1 for s in train_set if s.meta.get("synthetic")),
                    "seeds": seeds,
                    **arm_metrics[arm],
                }
            subgroups = evaluate_subgroups(
                test, test_groups, probabilities, reference="real", n_boot=config.n_boot, seed=config.seed
            )
            write_json_atomic(
                self.run_dir / "predictions.json",
                {
                    "image_id": [s.meta["image_id"] for s in test],
                    "group": test_groups,
                    "label": y_test.tolist(),
                    "p_malignant": {arm: [p.tolist() for p in ps] for arm, ps in probabilities.items()},
                },
            )

        # 9. the result JSON, written atomically, never over a finished one
        self.timings["total"] = time.perf_counter() - start
        result = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "created": created,
            "dermabench_version": dermabench.__version__,
            "git_commit": git_commit(),
            "protocol": PROTOCOL,
            "profile": config.profile,
            "config": config.to_dict(),
            "plugins": self.plugin_info,
            "data": {
                "n_train_pool": len(train_pool),
                "n_val": len(val),
                "n_test": len(test),
                "n_test_lesions": len(set(test_groups)),
                "test_copies_removed": len(copies),
                "rejected_images": data_report["rejected_images"]
                + (test_report["rejected_images"] if test_samples is not None else 0),
                "converted_images": data_report["converted_images"],
                "image_size": config.image_size,
                "resize": RESIZE_METHOD,
                "split": split_facts,
                "near_duplicates": near_duplicates,
                "dataset_report": data_report,
                **({"test_dataset_report": test_report} if test_samples is not None else {}),
                "prevalence": {
                    "train_pool": _prevalence(train_pool),
                    "val": _prevalence(val),
                    "test": _prevalence(test),
                },
            },
            "fidelity": fidelity,
            "memorization": memorization,
            "arms": arm_metrics,
            "subgroups": subgroups,
            "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
            "resumed_stages": self.stages.reused,
            "environment": environment(self.device),
        }
        written = write_json_atomic(result_path, result, overwrite=False)
        self.processes.wait()
        return written

    def check_available_images(self, generator: Generator, wanted: dict[int, int]) -> None:
        """Fail now, not after captions and fit, when the generator cannot give as many images as prompted."""
        with plugin_call("generator", self.config.generator, "available_images"):
            available = generator.available_images()
        if available is None:
            return
        for label, count in wanted.items():
            if count > available.get(label, 0):
                raise DermabenchError(
                    f"generator '{self.config.generator}' has {available.get(label, 0)} {LABEL_NAMES[label]} images "
                    f"but the run prompts for {count} (--n-synthetic {self.config.n_synthetic}, "
                    f"prompt_balance = {self.config.prompt_balance}); lower --n-synthetic or add images"
                )

    def warn_about_leaks(self, split_facts: dict) -> None:
        """Say when one lesion may be photographed on both sides of the split: that inflates every test metric."""
        n_images, by_image = sum(split_facts["grouped_by"].values()), split_facts["grouped_by"]["image"]
        if split_facts["groups_on_two_sides"]:
            self.progress.log(
                f"warning: the dataset's official split puts {split_facts['groups_on_two_sides']} lesion(s) or "
                "patient(s) on two sides; its test metrics are optimistic (data.split in the result)"
            )
        if by_image:
            kind = "its official split is by image" if split_facts["source"] == "official" else "each is split alone"
            self.progress.log(
                f"warning: {by_image} of {n_images} images carry no lesion_id or patient_id, so {kind}: two "
                "photographs of one lesion may sit on both sides (compare such results only with each other)"
            )

    def save_grids(self, train_pool: Sequence[Sample], synthetic: Sequence[Sample], closest_pairs) -> None:
        rows = []
        for label, name in LABEL_NAMES.items():
            rows.append((f"real {name}", [s.image for s in train_pool if s.label == label][:8]))
            rows.append((f"synthetic {name}", [s.image for s in synthetic if s.label == label][:8]))
        save_grid(rows, self.run_dir / "samples.png", title=f"{self.config.generator} on {self.config.dataset}")
        if closest_pairs:
            save_grid(closest_pairs, self.run_dir / "closest_pairs.png", title="synthetic vs nearest train image")


def _prevalence(samples: Sequence[Sample]) -> float:
    return round(sum(s.label for s in samples) / max(len(samples), 1), 4)


def run(config: RunConfig, progress: Progress | None = None, force: bool = False) -> Path:
    """Run (or resume) the protocol for `config`; returns the path of the result JSON.

    A run that finished before is reported, not redone; `force` starts a new run beside it.
    """
    return Run(config, progress, force=force).execute()
