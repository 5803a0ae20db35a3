"""Prompts for the generator: captions drawn from the train pool, with per-image seeds.

Each prompt's seed is derived from the run seed and the prompt's index alone, so
image i is the same whether it is generated alone, in a batch, or on another GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dermabench.api import BENIGN, LABEL_NAMES, MALIGNANT, Prompt, Sample
from dermabench.errors import DermabenchError
from dermabench.seeding import derive_seed


def class_counts(n: int, train: Sequence[Sample], balance: str) -> dict[int, int]:
    """How many prompts of each class: half and half, or the train pool's prevalence."""
    if balance == "balanced":
        n_malignant = n // 2
    else:
        prevalence = sum(s.label for s in train) / max(len(train), 1)
        n_malignant = round(n * prevalence)
    return {BENIGN: n - n_malignant, MALIGNANT: n_malignant}


def make_prompts(train: Sequence[Sample], n: int, seed: int, balance: str = "balanced") -> list[Prompt]:
    """`n` prompts whose texts are captions of train-pool images of the prompted class."""
    rng = np.random.default_rng(derive_seed(seed, "prompts"))
    labels: list[int] = []
    for label, count in class_counts(n, train, balance).items():
        pool = [s.caption for s in train if s.label == label]
        if count and not pool:
            raise DermabenchError(f"the train pool has no {LABEL_NAMES[label]} images to draw prompts from")
        labels += [label] * count
    labels = [labels[i] for i in rng.permutation(len(labels))]
    captions = {label: [s.caption for s in train if s.label == label] for label in (BENIGN, MALIGNANT)}
    return [
        Prompt(
            text=captions[label][rng.integers(len(captions[label]))],
            label=label,
            seed=derive_seed(seed, "image", index),
        )
        for index, label in enumerate(labels)
    ]
