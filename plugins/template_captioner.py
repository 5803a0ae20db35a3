"""The `template` captioner: the DermaFlux caption template filled from each sample's metadata.

"This photo depicts a {benign|malignant} lesion. Here's a description of the mole: ..."
followed by whatever the dataset knows (the phantom's true attributes; site, age
and sex for clinical datasets). It measures nothing in the image; the `abcd`
captioner does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dermabench
from dermabench import LABEL_NAMES, Captioner, RunContext, Sample

TEMPLATE = "This photo depicts a {label} lesion. Here's a description of the mole: {description}"


def _phrase(key: str, value: Any) -> str | None:
    """One clause for one metadata field, or None for fields that say nothing about the lesion's look."""
    if value in (None, "", [], "unknown"):
        return None
    if key == "asymmetry":
        return f"{'asymmetric' if value >= 0.5 else 'roughly symmetric'} shape"
    if key == "border_irregularity":
        return f"{'irregular' if value >= 0.5 else 'regular'} border"
    if key == "colours" and isinstance(value, (list, tuple)):
        return f"colours {', '.join(map(str, value))}"
    if key == "structures" and isinstance(value, (list, tuple)):
        return f"structures {', '.join(map(str, value))}"
    if key == "diameter_mm":
        return f"diameter about {float(value):.0f} mm"
    if key in ("site", "localization"):
        return f"located on the {value}"
    if key == "age":
        return f"patient aged {float(value):.0f}"
    if key == "sex":
        return f"{value} patient"
    if key == "fitzpatrick":
        return f"Fitzpatrick skin type {value}"
    return None


def describe(meta: Mapping[str, Any]) -> str:
    clauses = [phrase for key, value in meta.items() if (phrase := _phrase(key, value))]
    return (", ".join(clauses) if clauses else "no further details") + "."


class TemplateCaptioner(Captioner):
    name = "template"
    description = "DermaFlux caption template filled from dataset metadata (no image analysis)"

    def __init__(self, **options: Any) -> None:
        if options:
            raise dermabench.DermabenchError(f"captioner 'template' takes no options, got {sorted(options)}")
        super().__init__()

    def caption(self, samples: Sequence[Sample], context: RunContext) -> list[str]:
        return [TEMPLATE.format(label=LABEL_NAMES[s.label], description=describe(s.meta)) for s in samples]


@dermabench.hookimpl
def register_captioners(register):
    register(TemplateCaptioner)
