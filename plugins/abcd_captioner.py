"""The `abcd` captioner: the DermaFlux caption recipe, from what is measured in each image.

"This photo depicts a {benign|malignant} lesion. Here's a description of the mole: ..."
followed by the ABCD attributes that `lesion_measurements` measures in the pixels
(asymmetry about the principal axes, border irregularity, the dermoscopic colours
present, the diameter) and, unless `metadata=false`, the site, age and sex the
dataset knows. Example:

    This photo depicts a malignant lesion. Here's a description of the mole: asymmetric
    in both axes, with an irregular, notched border, three colours (light brown, dark brown
    and blue-grey), about a third of the frame across. Located on the back of a 55-year-old
    male patient.

Unlike the `template` captioner it needs no attribute metadata, so it works on any
image folder; on the `phantom` dataset its measurements agree with the true
attributes (tests/test_abcd_captioner.py checks the rank correlations).

Options (strings from the CLI are coerced):
  metadata=true|false   add site, age and sex from the sample's metadata (default true)
  fov_mm=NUMBER         width of the image in mm; the diameter is then given in mm
                        (default: none, the diameter is given as a share of the frame)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dermabench
from dermabench import LABEL_NAMES, Captioner, RunContext, Sample

if TYPE_CHECKING:  # the measurement stack (scipy, scikit-image) is imported when captions are made
    from dermabench_plugins.lesion_measurements import LesionMeasurements

__all__ = [
    "ABCDCaptioner",
    "TEMPLATE",
    "UNMEASURED",
    "describe",
    "findings",
    "metadata_sentence",
    "register_captioners",
]

TEMPLATE = "This photo depicts a {label} lesion. Here's a description of the mole: {description}"
OPTIONS = ("metadata", "fov_mm")
UNMEASURED = "the lesion outline could not be measured"

_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
# share of the frame -> words; the nearest on a log scale is used
_FRACTIONS = (
    (1 / 10, "about a tenth"), (1 / 8, "about an eighth"), (1 / 6, "about a sixth"), (1 / 5, "about a fifth"),
    (1 / 4, "about a quarter"), (1 / 3, "about a third"), (2 / 5, "about two fifths"), (1 / 2, "about half"),
    (2 / 3, "about two thirds"), (3 / 4, "about three quarters"), (0.9, "nearly all"),
)  # fmt: skip


def _bool_option(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise dermabench.DermabenchError(f"captioner 'abcd': option {name}={value!r} is not true or false")


def _positive_option(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise dermabench.DermabenchError(f"captioner 'abcd': option {name}={value!r} is not a number") from None
    if not (number > 0 and math.isfinite(number)):
        raise dermabench.DermabenchError(f"captioner 'abcd': option {name}={value!r} must be a positive number")
    return number


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _asymmetry_phrase(m: LesionMeasurements) -> str:
    if m.asymmetry_axes >= 2:
        return "asymmetric in both axes"
    if m.asymmetry_axes == 1:
        return "asymmetric in one axis"
    return "symmetric in both axes" if m.asymmetry < 0.2 else "roughly symmetric"


def _border_phrase(m: LesionMeasurements) -> str:
    b = m.border_irregularity
    if b < 0.2:
        return "a regular, smooth border"
    if b < 0.45:
        return "a slightly irregular border"
    if b < 0.7:
        return "an irregular border"
    return "an irregular, notched border"


def _colour_phrase(m: LesionMeasurements) -> str:
    if not m.colours:
        return "no distinct colour"
    if len(m.colours) == 1:
        return f"one colour ({m.colours[0]})"
    return f"{_NUMBERS[len(m.colours)]} colours ({_join(m.colours)})"


def _diameter_phrase(m: LesionMeasurements, fov_mm: float | None) -> str:
    if fov_mm is not None:
        mm = m.relative_diameter * fov_mm
        return f"about {mm:.0f} mm across" if mm >= 1.5 else "under 2 mm across"
    d = max(m.relative_diameter, 1e-3)
    words = min(_FRACTIONS, key=lambda item: abs(math.log(d / item[0])))[1]
    return f"{words} of the frame across"


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip().lower() not in ("", "unknown", "nan", "none")


def metadata_sentence(meta: Mapping[str, Any]) -> str:
    """'Located on the back of a 55-year-old male patient.' from whatever of site, age, sex is known ('' if none)."""
    site = next((meta[k] for k in ("site", "localization") if _present(meta.get(k))), None)
    age = meta.get("age") if _present(meta.get("age")) else None
    sex = str(meta["sex"]).strip().lower() if _present(meta.get("sex")) else None
    try:
        age_words = f"{float(age):.0f}-year-old" if age is not None else None
    except (TypeError, ValueError):
        age_words = None
    person = " ".join(w for w in (age_words, sex) if w)
    if site is None and not person:
        return ""
    patient = f"a {person} patient" if person else ""
    if site is not None:
        where = f"Located on the {str(site).strip().lower()}"
        return f"{where} of {patient}." if patient else f"{where}."
    return f"Seen on {patient}."


def findings(m: LesionMeasurements, fov_mm: float | None = None) -> list[str]:
    """The measured attributes as short phrases, in ABCD order (empty if the outline was not measured)."""
    if not m.segmentation_ok:
        return []
    return [
        _asymmetry_phrase(m),
        f"with {_border_phrase(m)}",
        _colour_phrase(m),
        _diameter_phrase(m, fov_mm),
    ]


def describe(m: LesionMeasurements, meta: Mapping[str, Any] | None = None, fov_mm: float | None = None) -> str:
    """The description part of the caption (after "Here's a description of the mole: ")."""
    parts = findings(m, fov_mm)
    text = (", ".join(parts) if parts else UNMEASURED) + "."
    extra = metadata_sentence(meta) if meta is not None else ""
    return f"{text} {extra}" if extra else text


class ABCDCaptioner(Captioner):
    """The DermaFlux caption template filled with ABCD attributes measured in the image."""

    name = "abcd"
    description = "DermaFlux caption template with ABCD attributes measured in the image (+ site, age, sex)"

    def __init__(self, metadata: Any = True, fov_mm: Any = None, **options: Any) -> None:
        if options:
            raise dermabench.DermabenchError(
                f"captioner 'abcd': unknown option(s) {', '.join(sorted(options))}. Known: {', '.join(OPTIONS)}."
            )
        self.metadata = _bool_option("metadata", metadata)
        self.fov_mm = _positive_option("fov_mm", fov_mm)
        super().__init__(metadata=self.metadata, fov_mm=self.fov_mm)

    def measure(self, samples: Sequence[Sample], context: RunContext) -> list[LesionMeasurements]:
        """The ABCD measurements of each sample's image, in order (with progress)."""
        from dermabench_plugins.lesion_measurements import measure

        track = context.progress.track(samples, description="abcd: measuring lesions", total=len(samples))
        return [measure(sample.image) for sample in track]

    def describe(self, measurements: LesionMeasurements, sample: Sample) -> str:
        return describe(measurements, sample.meta if self.metadata else None, self.fov_mm)

    def caption(self, samples: Sequence[Sample], context: RunContext) -> list[str]:
        measured = self.measure(samples, context)
        return [
            TEMPLATE.format(label=LABEL_NAMES[int(sample.label)], description=self.describe(m, sample))
            for sample, m in zip(samples, measured)
        ]


@dermabench.hookimpl
def register_captioners(register):
    register(ABCDCaptioner)
