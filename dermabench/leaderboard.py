"""Leaderboards rendered from result JSON files alone; nothing is recomputed.

Rows are grouped by what makes numbers comparable (dataset, test set, profile,
image size, extractor, N real, N synthetic): a ranking never mixes FIDs computed
with different backbones or sample sizes. Within a group, rows are sorted by the
AUC gain of `real+synthetic` over `real`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

GROUP_KEYS = ("dataset", "test_dataset", "profile", "image_size", "extractor", "n_real", "n_synthetic")
ARM_COLUMNS = ("real", "real+synthetic", "synthetic", "real+augment")


def row_of(result: dict) -> dict[str, Any]:
    """One flat leaderboard row from one result dict."""
    config, fidelity, arms = result["config"], result.get("fidelity") or {}, result["arms"]
    row: dict[str, Any] = {
        "run_id": result["run_id"],
        "generator": result["plugins"]["generator"]["name"],
        "classifier": result["plugins"]["classifier"]["name"],
        "dataset": result["plugins"]["dataset"]["name"],
        "test_dataset": config.get("test_dataset") or "",
        "profile": result["profile"],
        "image_size": config.get("image_size"),
        "extractor": fidelity.get("extractor", ""),
        "n_real": arms["real"]["n_real"],
        "n_synthetic": config.get("n_synthetic"),
        "seeds": len(arms["real"]["seeds"]),
        "fid": fidelity.get("fid"),
        "fid_real_floor": fidelity.get("fid_real_floor"),
        "relative_fid": fidelity.get("relative_fid"),
        "near_copy_rate": (result.get("memorization") or {}).get("near_copy_rate"),
    }
    for arm in ARM_COLUMNS:
        if arm not in arms:
            continue
        values = arms[arm]
        for metric in ("auc", "accuracy"):
            row[f"{metric}[{arm}]"] = values.get(metric)
            row[f"{metric}_ci95[{arm}]"] = values.get(f"{metric}_ci95")
        delta = (values.get("delta_vs_real") or {}).get("auc")
        if delta:
            row[f"delta_auc[{arm}]"] = delta.get("value")
            row[f"delta_auc_ci95[{arm}]"] = delta.get("ci95")
    return row


def group_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(key) for key in GROUP_KEYS)


def grouped(rows: Iterable[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row), []).append(row)

    def rank(row: dict[str, Any]) -> tuple:
        delta = row.get("delta_auc[real+synthetic]")
        return (delta is None, -(delta or 0.0), row["run_id"])

    return [(key, sorted(members, key=rank)) for key, members in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(value: Any, ci: Sequence[float] | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if ci and None not in ci:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]" if not signed else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
    return text


def to_markdown(rows: Iterable[dict[str, Any]]) -> str:
    out = []
    for key, members in grouped(rows):
        heading = " · ".join(f"{name}={value}" for name, value in zip(GROUP_KEYS, key) if value not in ("", None))
        arms = [arm for arm in ARM_COLUMNS if any(f"auc[{arm}]" in row for row in members)]
        header = ["#", "generator", "classifier", "FID", "rel. FID", "near-copy"]
        header += [f"AUC {arm}" for arm in arms]
        header += [f"ΔAUC {arm}" for arm in arms if arm != "real"]
        lines = [f"### {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, row in enumerate(members, 1):
            cells = [str(rank), row["generator"], row["classifier"], _fmt(row["fid"]), _fmt(row["relative_fid"], 2)]
            cells.append(_fmt(row["near_copy_rate"]))
            cells += [_with_ci(row.get(f"auc[{arm}]"), row.get(f"auc_ci95[{arm}]")) for arm in arms]
            cells += [
                _with_ci(row.get(f"delta_auc[{arm}]"), row.get(f"delta_auc_ci95[{arm}]"), signed=True)
                for arm in arms
                if arm != "real"
            ]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n" if out else "No finished runs found.\n"


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    rows = [row for _, members in grouped(rows) for row in members]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: json.dumps(value) if isinstance(value, list) else value for key, value in row.items()})
    return buffer.getvalue()


def to_json(rows: Iterable[dict[str, Any]]) -> str:
    groups = [
        {"group": dict(zip(GROUP_KEYS, key)), "rows": members} for key, members in grouped(rows)
    ]
    return json.dumps(groups, indent=2) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def render(results: Iterable[dict], fmt: str = "md") -> str:
    return FORMATS[fmt]([row_of(result) for result in results])
