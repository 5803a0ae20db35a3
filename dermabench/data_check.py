"""`dermabench data check`: load a dataset the way a run would, and say what is in it.

`check` instantiates the dataset plugin, consumes every sample and returns the
plugin's load report (`dataset.report`, when it keeps one: what was found,
excluded and rejected) plus counts made here from the samples themselves, so it
works for third-party datasets too. `format_report` renders it as text.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from PIL import Image

from dermabench.api import LABEL_NAMES

#: list entries shown per item by `format_report`
SHOW = 10


def _counts(counter: Mapping[str, int]) -> dict[str, int]:
    return {key: counter[key] for key in sorted(counter, key=lambda k: (-counter[k], str(k)))}


def check(dataset_name: str, data_dir: str | None, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load `dataset_name` from `data_dir` with `options` (as from `--dataset-opt`) and report on it.

    Returns the dataset's own report (if it has one) plus: dataset, data_dir,
    options, n_images, n_lesions (distinct lesion_id), n_without_lesion_id,
    n_patients, n_groups (the units a grouped split keeps together: lesion, else
    patient, else image), label_counts, dx_counts, official_split_counts (when
    the samples carry one), modes, min_size / max_size, rejected (samples the
    host would reject: label not 0/1, not a PIL image, image data unreadable)
    and load_seconds. Errors the dataset raises (`DermabenchError`) propagate.
    """
    from dermabench import plugins

    cls = plugins.get("dataset", dataset_name).cls
    start = time.perf_counter()
    dataset = cls(data_dir=str(data_dir) if data_dir is not None else None, **dict(options or {}))
    labels: Counter = Counter()
    dx: Counter = Counter()
    splits: Counter = Counter()
    modes: Counter = Counter()
    lesions: set = set()
    patients: set = set()
    groups: set = set()
    rejected: list[tuple[str, str]] = []
    without_lesion = 0
    n_images = 0
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    for index, sample in enumerate(dataset.samples()):
        meta = sample.meta or {}
        image_id = str(meta.get("image_id", index))
        if sample.label not in LABEL_NAMES:
            rejected.append((image_id, f"label {sample.label!r} is not 0 (benign) or 1 (malignant)"))
            continue
        if not isinstance(sample.image, Image.Image):
            rejected.append((image_id, f"not a PIL image but {type(sample.image).__name__}"))
            continue
        try:
            sample.image.load()  # a no-op for images already decoded
        except Exception as exc:  # noqa: BLE001 - whatever breaks the image, the host would reject it
            rejected.append((image_id, f"cannot decode: {exc}"))
            continue
        n_images += 1
        labels[LABEL_NAMES[sample.label]] += 1
        if meta.get("dx") not in (None, ""):
            dx[str(meta["dx"])] += 1
        if meta.get("official_split") not in (None, ""):
            splits[str(meta["official_split"])] += 1
        modes[sample.image.mode] += 1
        size = sample.image.size
        min_size = size if min_size is None else (min(min_size[0], size[0]), min(min_size[1], size[1]))
        max_size = size if max_size is None else (max(max_size[0], size[0]), max(max_size[1], size[1]))
        lesion, patient = meta.get("lesion_id"), meta.get("patient_id")
        if lesion not in (None, ""):
            lesions.add(lesion)
            groups.add(("lesion", lesion))
        else:
            without_lesion += 1
            groups.add(("patient", patient) if patient not in (None, "") else ("image", image_id))
        if patient not in (None, ""):
            patients.add(patient)
    seconds = time.perf_counter() - start
    report = dict(getattr(dataset, "report", None) or {})
    result: dict[str, Any] = {
        **report,
        "dataset": dataset_name,
        "data_dir": None if data_dir is None else str(data_dir),
        "options": dict(options or {}),
        "n_images": n_images,
        "n_lesions": len(lesions),
        "n_without_lesion_id": without_lesion,
        "n_patients": len(patients),
        "n_groups": len(groups),
        "label_counts": {name: labels[name] for name in LABEL_NAMES.values()},
        "dx_counts": _counts(dx),
        "modes": _counts(modes),
        "min_size": list(min_size) if min_size else None,
        "max_size": list(max_size) if max_size else None,
        "rejected": rejected,
        "load_seconds": round(seconds, 3),
    }
    if splits:
        result["official_split_counts"] = {name: splits[name] for name in sorted(splits)}
    return result


def _listing(items: list, show: int = SHOW) -> str:
    shown = [", ".join(map(str, item)) if isinstance(item, (list, tuple)) else str(item) for item in items[:show]]
    more = f" … and {len(items) - show} more" if len(items) > show else ""
    return "; ".join(shown) + more


def _count_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in counts.items()) or "none"


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable lines for a `check` result (or any dataset report dict)."""
    lines: list[str] = []
    name = report.get("dataset", "dataset")
    where = f" from {report['data_dir']}" if report.get("data_dir") else ""
    lines.append(f"{name}{where}")
    for key, label in (("csv", "metadata"), ("metadata_csv", "joined metadata"), ("npz", "file"),
                       ("images_root", "image folder"), ("format", "format"), ("layout", "layout")):  # fmt: skip
        if report.get(key):
            lines.append(f"  {label}: {report[key]}")
    if "n_rows" in report:
        lines.append(
            f"  metadata rows: {report['n_rows']}; image files found: {report.get('n_images_found', '?')}; "
            f"usable (image + label): {report.get('n_usable', '?')}"
        )
    n_images = report.get("n_images", report.get("n_loaded", 0))
    seconds = f" in {report['load_seconds']:.1f} s" if "load_seconds" in report else ""
    lines.append(f"  images loaded: {n_images}{seconds}")
    if "n_lesions" in report:
        text = f"  lesions: {report['n_lesions']} distinct lesion_id"
        if report.get("n_without_lesion_id"):
            text += f" ({report['n_without_lesion_id']} images without one)"
        if report.get("n_patients"):
            text += f"; patients: {report['n_patients']}"
        text += f"; split groups: {report.get('n_groups', '?')}"
        lines.append(text)
    labels = report.get("label_counts") or {}
    lines.append(f"  labels: {_count_text(labels)}")
    mapping = report.get("mapping")
    if mapping:
        lines.append(f"  malignant = {', '.join(mapping['malignant'])}; benign = {', '.join(mapping['benign'])}")
    if report.get("dx_counts"):
        lines.append(f"  dx: {_count_text(report['dx_counts'])}")
    if report.get("official_split_counts"):
        lines.append(f"  official split: {_count_text(report['official_split_counts'])}")
    if report.get("min_size"):
        lo, hi = report["min_size"], report["max_size"]
        sizes = f"{lo[0]}×{lo[1]}" if lo == hi else f"{lo[0]}×{lo[1]} to {hi[0]}×{hi[1]}"
        lines.append(f"  image size: {sizes}; modes: {_count_text(report.get('modes') or {})}")
    problems = 0
    for key, label in (
        ("unknown_dx", "unknown dx (excluded)"),
        ("excluded_dx", "dx in neither class (excluded)"),
    ):
        counts = report.get(key) or {}
        if counts:
            problems += 1
            lines.append(f"  {label}: {_count_text(counts)}")
    for key, label in (
        ("missing_images", "metadata rows without an image"),
        ("images_without_metadata", "images without a metadata row"),
        ("duplicate_ids", "duplicate image ids (first kept)"),
        ("undecodable", "undecodable images (rejected)"),
        ("rejected", "samples the host would reject"),
    ):
        items = report.get(key) or []
        if items:
            problems += 1
            lines.append(f"  {label}: {len(items)}: {_listing(list(items))}")
    if report.get("converted_modes"):
        lines.append(f"  not RGB (the host converts them): {_count_text(report['converted_modes'])}")
    for note in report.get("notes") or []:
        lines.append(f"  note: {note}")
    if not problems:
        lines.append("  no problems found")
    return "\n".join(lines)
