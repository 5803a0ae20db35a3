"""Leaderboards rendered from result JSON files alone; nothing is recomputed.

Rows are grouped by what makes numbers comparable (dataset with its options, test
set, profile, image size, extractor, N real, N synthetic, seed, protocol version):
a ranking never mixes FIDs computed with different backbones, sample sizes or
definitions, nor AUCs measured on different test sets. Within a group, rows are sorted by the
AUC gain of `real+synthetic` over `real`, and the best value of every metric
column is marked (bold in markdown and LaTeX, a `best` field in CSV and JSON) —
within its group only, and only where the group has two or more values.

Columns are chosen by name (`--columns generator,fid,auc,delta_auc`): a row key
such as `auc[real+synthetic]`, or an arm metric without an arm (`auc`), which
stands for that metric of every arm the group has (`delta_*` skips `real`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dermabench.config import PROFILES
from dermabench.errors import DermabenchError, unknown_name

#: a different seed is a different split, so another test set: rows of two seeds are not rivals
GROUP_KEYS = ("dataset", "test_dataset", "profile", "image_size", "extractor", "n_real", "n_synthetic", "seed",
              "protocol")  # fmt: skip
ARM_COLUMNS = ("real", "real+synthetic", "synthetic", "real+augment")
IDENTITY_COLUMNS = ("run_id", "generator", "generator_options", "classifier", "classifier_options", "dataset",
                    "test_dataset", "profile", "image_size", "extractor", "n_real", "n_synthetic", "seed",
                    "seeds")  # fmt: skip
#: tables name a plugin with the options its run was given: `dermaflux (train=none)`
WITH_OPTIONS = ("generator", "classifier")
RUN_METRICS = ("fid", "fid_real_floor", "relative_fid", "kid_mean", "precision", "recall", "near_copy_rate")
ARM_METRICS = ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1")
DELTA_METRICS = ("auc", "accuracy", "balanced_accuracy")
#: metrics where smaller is better; every other metric column is ranked high-to-low
LOWER_IS_BETTER = frozenset({"fid", "relative_fid", "kid_mean", "near_copy_rate"})
#: reference values, shown but never ranked
UNRANKED = frozenset({"fid_real_floor"})
DIGITS = {"relative_fid": 2}
#: md / LaTeX tables without --columns
DEFAULT_TABLE_COLUMNS = ("generator", "classifier", "fid", "relative_fid", "near_copy_rate", "auc", "delta_auc")
#: CSV / JSON without --columns
DEFAULT_DATA_COLUMNS = (*IDENTITY_COLUMNS, "fid", "fid_real_floor", "relative_fid", "near_copy_rate",
                        "auc", "accuracy", "delta_auc")  # fmt: skip
LABELS = {"fid": "FID", "fid_real_floor": "FID floor", "relative_fid": "rel. FID", "kid_mean": "KID",
          "precision": "precision", "recall": "recall", "near_copy_rate": "near-copy", "auc": "AUC",
          "accuracy": "acc.", "balanced_accuracy": "bal. acc.", "sensitivity": "sens.", "specificity": "spec.",
          "f1": "F1", "n_real": "N real", "n_synthetic": "N synth."}  # fmt: skip


def options_text(options: dict[str, Any] | None, profile_defaults: Mapping[str, Any] | None = None) -> str:
    """A run's plugin options as one sorted `key=value, ...` string ("" for none), leaving out those that
    are its profile's own defaults (a table's group already names the profile)."""
    defaults = {key: str(value) for key, value in (profile_defaults or {}).items()}
    return ", ".join(f"{key}={value}" for key, value in sorted((options or {}).items())
                     if defaults.get(key) != str(value))


def row_of(result: dict) -> dict[str, Any]:
    """One flat leaderboard row from one result dict."""
    config, fidelity, arms = result["config"], result.get("fidelity") or {}, result["arms"]
    generator, classifier = result["plugins"]["generator"]["name"], result["plugins"]["classifier"]["name"]
    dataset = result["plugins"]["dataset"]["name"]
    profile = PROFILES.get(result["profile"])
    defaults = profile.plugin_options if profile is not None else {}
    row: dict[str, Any] = {
        "run_id": result["run_id"],
        "generator": generator,
        "generator_options": options_text(config.get("generator_options"), defaults.get(generator)),
        "classifier": classifier,
        "classifier_options": options_text(config.get("classifier_options"), defaults.get(classifier)),
        "dataset": _with_options(dataset, options_text(config.get("dataset_options"), defaults.get(dataset))),
        "test_dataset": config.get("test_dataset") or "",
        "profile": result["profile"],
        "image_size": config.get("image_size"),
        "extractor": fidelity.get("extractor", ""),
        "n_real": arms["real"]["n_real"],
        "n_synthetic": config.get("n_synthetic"),
        "seed": config.get("seed"),
        "seeds": len(arms["real"]["seeds"]),
        "protocol": (result.get("protocol") or {}).get("version"),
        **{key: fidelity.get(key) for key in RUN_METRICS if key != "near_copy_rate"},
        "near_copy_rate": (result.get("memorization") or {}).get("near_copy_rate"),
    }
    for arm in ARM_COLUMNS:
        if arm not in arms:
            continue
        values = arms[arm]
        for metric in ARM_METRICS:
            row[f"{metric}[{arm}]"] = values.get(metric)
            row[f"{metric}_ci95[{arm}]"] = values.get(f"{metric}_ci95")
        for metric in DELTA_METRICS:
            delta = (values.get("delta_vs_real") or {}).get(metric)
            if delta:
                row[f"delta_{metric}[{arm}]"] = delta.get("value")
                row[f"delta_{metric}_ci95[{arm}]"] = delta.get("ci95")
    return row


def _with_options(name: str, options: str) -> str:
    return f"{name} ({options})" if options else name


def group_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(key) for key in GROUP_KEYS)


def group_heading(key: tuple) -> str:
    return " · ".join(f"{name}={value}" for name, value in zip(GROUP_KEYS, key) if value not in ("", None))


def grouped(rows: Iterable[dict[str, Any]]) -> list[tuple[tuple, list[dict[str, Any]]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row), []).append(row)

    def rank(row: dict[str, Any]) -> tuple:
        delta = row.get("delta_auc[real+synthetic]")
        return (delta is None, -(delta or 0.0), row["run_id"])

    def order(key: tuple) -> tuple:  # numbers as numbers (60 before 120), then text
        return tuple((0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value)) for value in key)

    return [(key, sorted(members, key=rank)) for key, members in sorted(groups.items(), key=lambda kv: order(kv[0]))]


# -- columns -----------------------------------------------------------------------------------------------------

_ARM_KEY = re.compile(r"^(?P<base>[a-z_0-9]+)\[(?P<arm>[^\]]+)\]$")
_ARM_BASES = (*ARM_METRICS, *(f"delta_{m}" for m in DELTA_METRICS))


def known_columns() -> list[str]:
    return [*IDENTITY_COLUMNS, *RUN_METRICS, *_ARM_BASES]


def parse_columns(columns: str | Sequence[str] | None) -> list[str] | None:
    """Validate column names (comma-separated or a list); None means the format's default."""
    if columns is None:
        return None
    names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else [c.strip() for c in columns]
    names = [name for name in names if name]
    if not names:
        raise DermabenchError("--columns is empty; name at least one column")
    for name in names:
        match = _ARM_KEY.match(name)
        if match:
            if match["base"] not in _ARM_BASES:
                raise unknown_name("column", match["base"], _ARM_BASES)
            if match["arm"] not in ARM_COLUMNS:
                raise unknown_name("arm", match["arm"], ARM_COLUMNS)
        elif name not in known_columns():
            raise unknown_name("column", name, known_columns())
    return names


def expand_columns(names: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Row keys for `names`: an arm metric without an arm becomes one column per arm these rows have."""
    present = [arm for arm in ARM_COLUMNS if any(f"auc[{arm}]" in row for row in rows)]
    out: list[str] = []
    for name in names:
        if name in _ARM_BASES:
            arms = [arm for arm in present if not (name.startswith("delta_") and arm == "real")]
            out += [f"{name}[{arm}]" for arm in arms]
        else:
            out.append(name)
    return list(dict.fromkeys(out))


def ci_key(column: str) -> str | None:
    """The row key of a column's 95 % CI, if it has one."""
    match = _ARM_KEY.match(column)
    return f"{match['base']}_ci95[{match['arm']}]" if match else None


def metric_of(column: str) -> str:
    match = _ARM_KEY.match(column)
    return match["base"] if match else column


def is_ranked(column: str) -> bool:
    base = metric_of(column)
    return base not in UNRANKED and (base in RUN_METRICS or base in _ARM_BASES)


def best_columns(members: Sequence[dict[str, Any]], columns: Iterable[str]) -> dict[str, set[str]]:
    """run_id -> the columns in which that row holds the group's best value.

    Values are compared as printed (rounded to the table's digits), so rows that read the same tie,
    and every tied row is marked. A column with fewer than two values in the group has no best.
    """
    best: dict[str, set[str]] = {row["run_id"]: set() for row in members}
    for column in columns:
        if not is_ranked(column):
            continue
        digits = DIGITS.get(metric_of(column), 3)
        shown = {row["run_id"]: round(row[column], digits) for row in members
                 if isinstance(row.get(column), (int, float)) and not isinstance(row.get(column), bool)}  # fmt: skip
        if len(shown) < 2:
            continue
        target = min(shown.values()) if metric_of(column) in LOWER_IS_BETTER else max(shown.values())
        for run_id, value in shown.items():
            if value == target:
                best[run_id].add(column)
    return best


def label_of(column: str) -> str:
    match = _ARM_KEY.match(column)
    if not match:
        return LABELS.get(column, column)
    base, arm = match["base"], match["arm"]
    if base.startswith("delta_"):
        return f"Δ{LABELS.get(base[6:], base[6:])} {arm}"
    return f"{LABELS.get(base, base)} {arm}"


# -- cell text ---------------------------------------------------------------------------------------------------


def _number(value: float, digits: int, signed: bool) -> str:
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def cell_parts(row: dict[str, Any], column: str) -> tuple[str, str] | None:
    """(value text, CI text or "") of one cell, or None when the row has no value."""
    value = row.get(column)
    if value is None or value == "":
        return None
    if column in WITH_OPTIONS and row.get(f"{column}_options"):
        return f"{value} ({row[f'{column}_options']})", ""
    if not isinstance(value, float):
        return str(value), ""
    digits, signed = DIGITS.get(metric_of(column), 3), column.startswith("delta_")
    ci = row.get(ci_key(column) or "")
    ci_text = ""
    if ci and None not in ci:
        ci_text = f"[{_number(ci[0], digits, signed)}, {_number(ci[1], digits, signed)}]"
    return _number(value, digits, signed), ci_text


# -- formats -----------------------------------------------------------------------------------------------------


def to_markdown(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    out = []
    for key, members in grouped(rows):
        keys = expand_columns(columns or DEFAULT_TABLE_COLUMNS, members)
        best = best_columns(members, keys)
        header = ["#", *(label_of(column) for column in keys)]
        lines = [f"### {group_heading(key)}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rank, row in enumerate(members, 1):
            cells = [str(rank)]
            for column in keys:
                parts = cell_parts(row, column)
                if parts is None:
                    cells.append("–")
                    continue
                text = f"**{parts[0]}**" if column in best[row["run_id"]] else parts[0]
                cells.append(f"{text} {parts[1]}" if parts[1] else text)
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n" if out else "No finished runs found.\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "Δ": r"$\Delta$", "·": r"$\cdot$", "–": "--"}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def to_latex(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """One booktabs `table` per comparable group (needs \\usepackage{booktabs}); best values in bold."""
    out = []
    for key, members in grouped(rows):
        keys = expand_columns(columns or DEFAULT_TABLE_COLUMNS, members)
        best = best_columns(members, keys)
        align = "r" + "".join("r" if is_ranked(column) or column in ("n_real", "n_synthetic") else "l" for column in keys)
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{latex_escape(group_heading(key))}}}",
            rf"\begin{{tabular}}{{{align}}}",
            r"\toprule",
            " & ".join([r"\#", *(latex_escape(label_of(column)) for column in keys)]) + r" \\",
            r"\midrule",
        ]
        for rank, row in enumerate(members, 1):
            cells = [str(rank)]
            for column in keys:
                parts = cell_parts(row, column)
                if parts is None:
                    cells.append("--")
                    continue
                value, ci = parts
                if isinstance(row.get(column), float):
                    bold = column in best[row["run_id"]]
                    text = rf"$\mathbf{{{value}}}$" if bold else f"${value}$"
                    cells.append(rf"{text} {{\scriptsize ${ci}$}}" if ci else text)
                else:
                    cells.append(latex_escape(value))
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n" if out else "% No finished runs found.\n"


def _data_columns(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None) -> list[str]:
    """Row keys for CSV/JSON: run_id, the chosen columns, and each one's CI beside it."""
    keys = ["run_id", *expand_columns(columns or DEFAULT_DATA_COLUMNS, rows)]
    out: list[str] = []
    for key in dict.fromkeys(keys):
        out.append(key)
        ci = ci_key(key)
        if ci and any(ci in row for row in rows):
            out.append(ci)
    return out


def _data_rows(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None):
    for key, members in grouped(rows):
        keys = _data_columns(members, columns)
        best = best_columns(members, keys)
        yield key, [
            {**{k: row.get(k) for k in keys}, "best": sorted(best[row["run_id"]])} for row in members
        ]


def to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """One table, rows in group order; `best` lists (;-separated) the columns a row is best in within its group."""
    rows = list(rows)
    fieldnames = [*_data_columns(rows, columns), "best"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for _, members in _data_rows(rows, columns):
        for row in members:
            writer.writerow(
                {
                    key: ";".join(value) if key == "best" else json.dumps(value) if isinstance(value, list) else value
                    for key, value in row.items()
                }
            )
    return buffer.getvalue()


def to_json(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    groups = [{"group": dict(zip(GROUP_KEYS, key)), "rows": members} for key, members in _data_rows(rows, columns)]
    return json.dumps(groups, indent=2) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex}


def render(results: Iterable[dict], fmt: str = "md", columns: str | Sequence[str] | None = None) -> str:
    if fmt not in FORMATS:
        raise unknown_name("format", fmt, FORMATS)
    return FORMATS[fmt]([row_of(result) for result in results], parse_columns(columns))
