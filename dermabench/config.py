"""The run configuration: every default in one place, profiles, TOML files and flags.

Precedence, lowest first: RunConfig defaults < profile < config file < command-line flags.
Plugin options follow the same order: a profile's options for a plugin (by name) <
the file's `[generator_options]` table < repeated `--generator-opt key=value` flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermabench.errors import DermabenchError, unknown_name

PLUGIN_SLOTS = ("generator", "classifier", "dataset", "test_dataset", "extractor", "captioner")
OPTION_TABLES = {
    "generator_options": "generator",
    "classifier_options": "classifier",
    "dataset_options": "dataset",
    "test_dataset_options": "test_dataset",
    "extractor_options": "extractor",
    "captioner_options": "captioner",
}
ARMS = ("real", "real+synthetic", "synthetic", "real+augment")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. `dermabench run` builds one; the result JSON stores it."""

    profile: str = "quick"
    generator: str = "dermaflux"  # tiny and trained on the train pool in smoke/quick; FLUX.1-dev + LoRA in paper
    classifier: str = "cnn"
    dataset: str = "phantom"
    data_dir: str | None = None
    test_dataset: str | None = None
    test_data_dir: str | None = None
    extractor: str = "efficientnet-lite0"
    captioner: str = "abcd"
    seed: int = 0
    #: K: classifier seeds per arm
    seeds: int = 2
    n_real: int = 500
    #: 875 = 500 × 1.75, the paper's synthetic-to-real ratio (4,375 / 2,500)
    n_synthetic: int = 875
    image_size: int = 64
    device: str = "auto"
    out: str = "results"
    arms: tuple[str, ...] = ("real", "real+synthetic", "synthetic")
    #: fractions of lesions held out for validation and test (the rest is the train pool)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    #: class-balanced prompts (DESIGN step 5), or "prevalence" to follow the train pool
    prompt_balance: str = "balanced"
    n_boot: int = 1000
    generator_options: Mapping[str, Any] = field(default_factory=dict)
    classifier_options: Mapping[str, Any] = field(default_factory=dict)
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    test_dataset_options: Mapping[str, Any] = field(default_factory=dict)
    extractor_options: Mapping[str, Any] = field(default_factory=dict)
    captioner_options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["arms"] = list(self.arms)
        return {key: dict(value) if isinstance(value, Mapping) else value for key, value in data.items()}

    def fingerprint(self) -> str:
        """A short hash of everything that determines the results (not where they are written), the protocol's
        version included: a run finished under an older protocol is not this command's run."""
        from dermabench.results import PROTOCOL

        data = self.to_dict()
        data.pop("out")
        data["protocol"] = PROTOCOL["version"]
        # `--dataset-opt n=500` (a string) and a profile's or file's n = 500 (a number) are one setting
        for table in OPTION_TABLES:
            data[table] = canonical_options(data[table])
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def canonical_options(options: Mapping[str, Any]) -> dict[str, str]:
    """Plugin options as the command line spells them, for every key that caches hold: `--dataset-opt n=500`
    and a profile's or file's `n = 500` are one setting and must find the same cached work."""
    return {key: _canonical(value) for key, value in options.items()}


def _canonical(value: Any) -> str:
    """An option value as the command line would spell it: 500 and "500", True and "true", ["a", "b"] and "a,b"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_canonical(item) for item in value)
    return str(value).strip()


@dataclass(frozen=True)
class Profile:
    description: str
    settings: Mapping[str, Any]
    #: default options per plugin name, applied only when that plugin is used
    plugin_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "seconds, for tests: tiny data, one seed, short training",
        dict(n_real=120, n_synthetic=120, seeds=1, n_boot=200),
        {
            "phantom": {"n": 500},
            "cnn": {"epochs": 3},
            "efficientnet-lite0": {"input_size": 64},
        },
    ),
    "quick": Profile(
        "the default main job: minutes on a 2-core CPU, embedded data, small models",
        dict(n_real=500, n_synthetic=875, seeds=2, n_boot=1000),
        {
            "phantom": {"n": 3000},
            "efficientnet-lite0": {"input_size": 128},
        },
    ),
    "paper": Profile(
        "the DermaFlux setting: 2,500 real + 4,375 synthetic at 224 px, 3 seeds; needs a GPU",
        dict(n_real=2500, n_synthetic=4375, seeds=3, image_size=224, n_boot=2000),
        {
            "efficientnet-lite0": {"input_size": 224},
            # a nominal epoch is one pass over the 2,500 real images: 20 epochs are 800 steps of 64 for every
            # arm (the CPU profiles' 512-image epochs would give ViT-B 160 steps, too few to fine-tune it)
            **{classifier: {"epoch_size": 2500} for classifier in ("cnn", "vit", "efficientnet", "resnet", "convnext")},
        },
    ),
}

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def parse_options(pairs: Iterable[str], flag: str) -> dict[str, str]:
    """`["epochs=5", "lr=1e-3"]` -> {"epochs": "5", "lr": "1e-3"}; values stay strings for the plugin."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DermabenchError(f"{flag} expects key=value, got '{pair}'")
        options[key.strip()] = value.strip()
    return options


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML run config. Keys are RunConfig field names; option tables are `[generator_options]` etc."""
    path = Path(path)
    if not path.is_file():
        raise DermabenchError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DermabenchError(f"{path}: not valid TOML: {exc}") from exc
    for key in data:
        if key not in _FIELDS:
            raise unknown_name(f"setting in {path}", key, _FIELDS)
    return data


def build_config(file_settings: Mapping[str, Any] | None = None, **flags: Any) -> RunConfig:
    """Merge defaults < profile < file < flags into a validated RunConfig.

    `flags` hold the command line's values; None means "not given". Option flags
    (`generator_options=...`) are dicts merged over the file's and profile's.
    """
    file_settings = dict(file_settings or {})
    flags = {key: value for key, value in flags.items() if value is not None}
    for key in flags:
        if key not in _FIELDS:
            raise unknown_name("setting", key, _FIELDS)
    profile_name = flags.get("profile") or file_settings.get("profile") or RunConfig.profile
    if not isinstance(profile_name, str):
        raise DermabenchError(f"'profile' must be a string, one of {', '.join(PROFILES)}; got {profile_name!r}")
    for slot in set(OPTION_TABLES.values()):  # a file may hold a list here; several generators are flags
        for source in (file_settings, flags):
            if slot in source and source[slot] is not None and not isinstance(source[slot], str):
                raise DermabenchError(
                    f"'{slot}' must be one plugin name (a string), got {source[slot]!r}"
                    + (" (several generators: repeat --generator on the command line)" if slot == "generator" else "")
                )
    if profile_name not in PROFILES:
        raise unknown_name("profile", profile_name, PROFILES)
    profile = PROFILES[profile_name]

    settings: dict[str, Any] = {"profile": profile_name, **profile.settings}
    for source in (file_settings, flags):
        for key, value in source.items():
            if key not in OPTION_TABLES:
                settings[key] = value
    # plugin options: profile defaults for the chosen plugin, then the file, then flags
    for table, slot in OPTION_TABLES.items():
        plugin_name = settings.get(slot, getattr(RunConfig, slot, None))
        merged = dict(profile.plugin_options.get(plugin_name, {})) if plugin_name else {}
        for source in (file_settings, flags):
            value = source.get(table) or {}
            if not isinstance(value, Mapping):
                raise DermabenchError(f"'{table}' must be a table of key = value pairs")
            merged.update(value)
        settings[table] = merged
    return validate(RunConfig(**_coerce(settings)))


def _coerce(settings: dict[str, Any]) -> dict[str, Any]:
    """Type-check settings from TOML against RunConfig's annotations, with errors that name the key."""
    out = {}
    for key, value in settings.items():
        expected = _FIELDS[key].type
        if key == "arms":
            if isinstance(value, str):
                value = [arm.strip() for arm in value.split(",") if arm.strip()]
            if not isinstance(value, (list, tuple)) or not all(isinstance(arm, str) for arm in value):
                raise DermabenchError(f"'arms' must be a list of arm names such as [\"real\", \"synthetic\"], got {value!r}")
            value = tuple(value)
        elif expected == "int" and not isinstance(value, bool):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise DermabenchError(f"'{key}' must be an integer, got {value!r}") from None
        elif expected == "float":
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise DermabenchError(f"'{key}' must be a number, got {value!r}") from None
        elif expected in ("str", "str | None") and value is not None and not isinstance(value, str):
            raise DermabenchError(f"'{key}' must be a string, got {value!r}")
        out[key] = value
    return out


def validate(config: RunConfig) -> RunConfig:
    def positive(key: str, allow_zero: bool = False) -> None:
        value = getattr(config, key)
        if value < 0 or (value == 0 and not allow_zero):
            raise DermabenchError(f"--{key.replace('_', '-')} must be {'≥ 0' if allow_zero else '> 0'}, got {value}")

    positive("seeds")
    positive("image_size")
    positive("n_real", allow_zero=True)
    positive("n_synthetic", allow_zero=True)
    positive("n_boot")
    if not 0 <= config.seed < 2**32:
        raise DermabenchError(f"--seed must be between 0 and 2**32 - 1, got {config.seed}")
    if config.image_size < 16:
        raise DermabenchError(f"--image-size must be at least 16, got {config.image_size}")
    for arm in config.arms:
        if arm not in ARMS:
            raise unknown_name("arm", arm, ARMS)
    if "real" not in config.arms:
        raise DermabenchError("the arms must include 'real': every other arm is compared with it")
    needs_real = [arm for arm in config.arms if arm.startswith("real")]
    if needs_real and config.n_real == 0:
        raise DermabenchError(f"--n-real is 0 but arms {needs_real} train on real images")
    needs_synth = [arm for arm in config.arms if arm != "real"]
    if needs_synth and config.n_synthetic == 0:
        raise DermabenchError(f"--n-synthetic is 0 but arms {needs_synth} need synthetic images")
    if config.n_synthetic == 0:
        raise DermabenchError("--n-synthetic must be > 0: every run measures the fidelity of synthetic images")
    if not (0 < config.val_fraction < 1 and 0 < config.test_fraction < 1):
        raise DermabenchError("val_fraction and test_fraction must lie between 0 and 1")
    if config.val_fraction + config.test_fraction >= 0.9:
        raise DermabenchError("val_fraction + test_fraction leave less than 10 % for training")
    if config.prompt_balance not in ("balanced", "prevalence"):
        raise DermabenchError(f"prompt_balance must be 'balanced' or 'prevalence', got '{config.prompt_balance}'")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", config.device):
        raise DermabenchError(f"--device must be auto, cpu, cuda[:N] or mps, got '{config.device}'")
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DermabenchError(f"--device {config.device}: torch sees no CUDA GPU on this machine")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise DermabenchError(f"--out {config.out} is a file, not a folder")
    if config.test_data_dir and not config.test_dataset:
        raise DermabenchError("--test-data-dir needs --test-dataset")
    for key in ("data_dir", "test_data_dir"):
        value = getattr(config, key)
        if value is not None and not Path(value).exists():
            raise DermabenchError(f"--{key.replace('_', '-')} does not exist: {value}")
    # absolute, so a run's identity (its folder name, the cache keys) names the folder wherever it was started
    config = dataclasses.replace(
        config, **{key: str(Path(getattr(config, key)).resolve()) for key in ("data_dir", "test_data_dir")
                   if getattr(config, key) is not None}
    )  # fmt: skip
    if (config.test_dataset, dict(config.test_dataset_options), config.test_data_dir) == (
        config.dataset, dict(config.dataset_options), config.data_dir
    ):
        raise DermabenchError(
            f"--test-dataset '{config.test_dataset}' is the training dataset itself (same options and folder): "
            "its test images would be images the classifier trained on; leave --test-dataset out to test on "
            "a held-out split of it"
        )
    return config
