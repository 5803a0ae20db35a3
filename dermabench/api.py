"""The public plugin API: the data types and base classes plugins subclass.

Third-party packages depend on these names and signatures; change them only
with a major version bump. Everything here is re-exported from `dermabench`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from PIL import Image

BENIGN, MALIGNANT = 0, 1
LABEL_NAMES = {BENIGN: "benign", MALIGNANT: "malignant"}

T = TypeVar("T")
log = logging.getLogger("dermabench")


@dataclass(frozen=True)
class Sample:
    """One labelled image. label 0 = benign, 1 = malignant.

    `meta` carries lesion_id / patient_id (used for grouped splits), image_id,
    dx, age, sex, site and fitzpatrick where known.
    """

    image: Image.Image
    label: int
    caption: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prompt:
    """What a generator is asked to draw: text, the class it must show, a seed."""

    text: str
    label: int
    seed: int


class Progress:
    """Progress reporter handed to plugins. The CLI swaps in a rich one.

    `track` wraps an iterable (like `rich.progress.track`); `log` prints a line.
    The base version only logs, so plugins can be driven from plain Python.
    """

    def track(self, iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        log.info("%s", description)
        yield from iterable

    def log(self, message: str) -> None:
        log.info("%s", message)


@dataclass(frozen=True)
class RunContext:
    """What a plugin may use while it runs.

    work_dir is private to this plugin and this configuration and persists
    across runs, so a plugin can cache trained weights there and resume.
    """

    device: str = "cpu"
    image_size: int = 64
    seed: int = 0
    work_dir: Path = Path(".dermabench-cache")
    profile: str = "quick"
    progress: Progress = field(default_factory=Progress)

    def rng(self, *salt: int | str) -> np.random.Generator:
        """A numpy generator derived from the run seed and a salt, for reproducible sub-streams."""
        from dermabench.seeding import derive_seed

        return np.random.default_rng(derive_seed(self.seed, *salt))


class Plugin:
    """Shared behaviour of every plugin kind: a name and keyword options."""

    name: ClassVar[str] = ""
    #: one line shown by `dermabench list`
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)


class Generator(Plugin):
    """Makes synthetic images from prompts. Subclass and register with `register_generators`."""

    #: True when each prompt's image depends on that prompt (text, label, seed) alone, not on which other
    #: prompts share the `generate` call: the host then generates in shards and a killed run resumes at the
    #: first unfinished shard. Set False for a generator that deals images out in call order.
    per_prompt: ClassVar[bool] = True

    def fit(self, train: Sequence[Sample], context: RunContext) -> None:
        """Adapt the generator to the real train pool. Never sees validation or test images.

        Optional: the default does nothing (for pre-trained or pre-generated sets).
        """

    def generate(self, prompts: Sequence[Prompt], context: RunContext) -> Iterable[Image.Image]:
        """Return exactly one RGB image per prompt, in prompt order."""
        raise NotImplementedError

    def cache_key(self) -> Mapping[str, Any]:
        """Everything besides prompts and options that determines the images (e.g. weight hashes).

        The host keys its image cache on this plus the options, prompts and image size.
        """
        return {}

    def available_images(self) -> Mapping[int, int] | None:
        """The most images of each label (0 benign, 1 malignant) this generator can give, or None: no limit.

        The host checks its prompt counts against this right after the split, so a folder of pre-generated
        images too small for `--n-synthetic` fails in seconds, before captions and `fit`.
        """
        return None


class Classifier(Plugin):
    """A benign-vs-malignant classifier. Subclass and register with `register_classifiers`."""

    def fit(self, train: Sequence[Sample], val: Sequence[Sample], context: RunContext) -> None:
        """Train on `train`; use `val` only for model selection and early stopping."""
        raise NotImplementedError

    def predict_proba(self, images: Sequence[Image.Image], context: RunContext) -> np.ndarray:
        """Return P(malignant) for each image: float array of shape (n,), values in [0, 1]."""
        raise NotImplementedError


class Dataset(Plugin):
    """A source of labelled real images. Subclass and register with `register_datasets`."""

    def __init__(self, data_dir: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.data_dir = Path(data_dir) if data_dir is not None else None

    def samples(self) -> Iterable[Sample]:
        """Yield every sample. Images may be any mode or size; the host validates and resizes."""
        raise NotImplementedError


class FeatureExtractor(Plugin):
    """An image embedding for FID, KID, precision/recall and memorization."""

    def extract(self, images: Sequence[Image.Image], context: RunContext) -> np.ndarray:
        """Return one feature vector per image: float array of shape (n, dim)."""
        raise NotImplementedError


class Captioner(Plugin):
    """Writes the text that describes a real image; generators are trained and prompted with it."""

    def caption(self, samples: Sequence[Sample], context: RunContext) -> list[str]:
        """Return one caption per sample, in order. The caption must name the class."""
        raise NotImplementedError


PLUGIN_KINDS: dict[str, type[Plugin]] = {
    "generator": Generator,
    "classifier": Classifier,
    "dataset": Dataset,
    "extractor": FeatureExtractor,
    "captioner": Captioner,
}
