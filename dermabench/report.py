"""`dermabench report`: one self-contained HTML file per run or per folder of runs.

Rendered from result.json (and the run's predictions.json and PNG grids) alone; nothing is
recomputed. Images are embedded as base64 data URIs and the CSS and the small table-sorting
script are inline, so the file opens from disk with no network. Every text taken from a result
is HTML-escaped. The figures are also written next to result.json (`roc.png`,
`delta_vs_real.png`) or into the results folder (`synthetic_ratio.png`).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dermabench
from dermabench import leaderboard, plots
from dermabench.errors import DermabenchError
from dermabench.results import RESULT_FILE, load_results, validate_result

__all__ = ["folder_report", "run_report", "write_report"]

REPORT_FILE = "report.html"
METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "bal. accuracy"), ("auc", "AUC"),
           ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("f1", "F1"),
           ("sens_at_spec80", "sens. @ 80 % spec."), ("sens_at_spec90", "sens. @ 90 % spec."))  # fmt: skip
ARM_NAMES = ("real", "real+synthetic", "synthetic", "real+augment")

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;
 max-width:1240px;margin:0 auto;padding:24px 28px 64px;background:#fff}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:36px 0 8px;padding-bottom:4px;border-bottom:2px solid #0072B2}
h3{font-size:1.05em;margin:22px 0 6px}.sub{color:#555;margin:0 0 12px}nav a{margin-right:14px;color:#0072B2}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.92em}th,td{padding:4px 10px;border-bottom:1px solid #ddd;
 text-align:left;vertical-align:top}th{background:#f3f5f8;font-weight:600}td.num,th.num{text-align:right;
 font-variant-numeric:tabular-nums}td.num{white-space:nowrap}tr:nth-child(even) td{background:#fafbfc}
.ci{color:#666;font-size:.88em}.best{font-weight:700}.best::after{content:" ★";color:#E69F00;font-size:.8em}
.small td{color:#999}.note{color:#555;font-size:.9em;margin:4px 0 10px}.warn{color:#a4461a}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #e3e3e3}
figcaption{color:#555;font-size:.9em;margin-top:4px}.cols{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.cols>figure{flex:1 1 520px;max-width:640px}.scroll{overflow-x:auto}table.stack .ci{display:block}
table.sortable th{cursor:pointer;user-select:none}table.sortable th[aria-sort=ascending]::after{content:" ▲"}
table.sortable th[aria-sort=descending]::after{content:" ▼"}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;
 font-size:.9em}details{margin:6px 0}
"""

# click a header to sort by it; cells sort by data-sort (numbers numerically, blanks last)
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function(table){
 table.querySelectorAll("th").forEach(function(th,col){th.addEventListener("click",function(){
  var asc=th.getAttribute("aria-sort")!=="ascending";
  table.querySelectorAll("th").forEach(function(h){h.removeAttribute("aria-sort")});
  th.setAttribute("aria-sort",asc?"ascending":"descending");
  var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
  function key(row){var c=row.cells[col],v=c.getAttribute("data-sort");if(v===null)v=c.textContent;
   var n=parseFloat(v);return v===""?null:(isNaN(n)?v.toLowerCase():n)}
  rows.sort(function(a,b){var x=key(a),y=key(b);if(x===null)return 1;if(y===null)return -1;
   if(x<y)return asc?-1:1;if(x>y)return asc?1:-1;return 0});
  rows.forEach(function(r){body.appendChild(r)})})})});
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# -- small builders ----------------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def value_ci(value: Any, ci: Sequence[Any] | None, digits: int = 3, signed: bool = False) -> str:
    """HTML of a number and its 95 % CI (escaped)."""
    text = esc(fmt(value, digits, signed))
    if value is not None and ci and len(ci) == 2 and None not in ci:
        text += f' <span class="ci">[{esc(fmt(ci[0], digits, signed))}, {esc(fmt(ci[1], digits, signed))}]</span>'
    return text


def td(content_html: str, numeric: bool = False, sort: Any = None, cls: str = "") -> str:
    classes = " ".join(c for c in ("num" if numeric else "", cls) if c)
    attrs = f' class="{classes}"' if classes else ""
    if sort is not None:
        attrs += f' data-sort="{esc(sort)}"'
    return f"<td{attrs}>{content_html}</td>"


def table(header: Sequence[str], rows: Iterable[str | tuple[str, str]], numeric_from: int = 1,
          sortable: bool = False, stack: bool = False) -> str:  # fmt: skip
    """`header` is plain text (escaped here); each row is the HTML of its cells, or (row class, cells HTML)."""
    heads = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(f'<tr class="{esc(row[0])}">{row[1]}</tr>' if isinstance(row, tuple) else f"<tr>{row}</tr>"
                   for row in rows)  # fmt: skip
    classes = " ".join(c for c, on in (("sortable", sortable), ("stack", stack)) if on)
    cls = f' class="{classes}"' if classes else ""
    return f'<div class="scroll"><table{cls}><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table></div>'


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = []
    for key, value in pairs:
        if isinstance(value, (dict, list)):
            shown = json.dumps(value, sort_keys=True)
        else:
            shown = fmt(value, 4) if isinstance(value, float) else ("–" if value is None else str(value))
        rows.append(f'<td class="mono">{esc(key)}</td><td class="mono">{esc(shown)}</td>')
    return table(["setting", "value"], rows, numeric_from=99)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(data: bytes | None, alt: str, caption: str) -> str:
    if data is None:
        return f'<p class="note">{esc(caption)}: not available.</p>'
    return (
        f'<figure><img src="{png_data_uri(data)}" alt="{esc(alt)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """sections: (anchor, heading, body HTML)."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(heading)}</a>' for anchor, heading, _ in sections)
    body = "".join(f'<section id="{esc(anchor)}"><h2>{esc(heading)}</h2>{html_}</section>'
                   for anchor, heading, html_ in sections)  # fmt: skip
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p><nav>{nav}</nav>{body}'
        f'<p class="note">Rendered from result JSON by dermabench {esc(dermabench.__version__)} at {esc(stamp)}.</p>'
        f"<script>{SORT_JS}</script></body></html>\n"
    )


# -- one run -----------------------------------------------------------------------------------------------------


def _read_result(run_dir: Path) -> dict:
    path = run_dir / RESULT_FILE
    try:
        result = json.loads(path.read_text())
        validate_result(result)
    except OSError as exc:
        raise DermabenchError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DermabenchError(f"{path} is not a dermabench result: {exc}") from None
    return result


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _section_overview(result: Mapping[str, Any]) -> str:
    plugins_rows = [
        f'<td>{esc(slot)}</td><td class="mono">{esc(info.get("name"))}</td>'
        f'<td class="mono">{esc(info.get("plugin"))}</td><td class="mono">{esc(info.get("version"))}</td>'
        for slot, info in (result.get("plugins") or {}).items()
    ]
    env = result.get("environment") or {}
    versions = [
        ("dermabench", result.get("dermabench_version")),
        ("git commit", result.get("git_commit")),
        ("protocol", f"{result['protocol'].get('name')} v{result['protocol'].get('version')}"),
        ("schema_version", result.get("schema_version")),
        ("created", result.get("created")),
        ("python", env.get("python")),
        ("torch", env.get("torch")),
        ("device", env.get("device")),
        ("platform", env.get("platform")),
        ("cpu threads", env.get("cpu_threads")),
        *sorted((env.get("packages") or {}).items()),
    ]
    data = result.get("data") or {}
    data_pairs = [(key, data.get(key)) for key in ("n_train_pool", "n_val", "n_test", "n_test_lesions",
                                                   "rejected_images", "converted_images", "image_size", "resize")]  # fmt: skip
    data_pairs += [(f"prevalence ({part})", value) for part, value in (data.get("prevalence") or {}).items()]
    split = data.get("split") or {}
    if split:
        grouped = ", ".join(f"{count} by {key}" for key, count in split["grouped_by"].items() if count)
        data_pairs += [("split", f"{split['source']}; images grouped {grouped}; "
                                 f"{split['groups_on_two_sides']} lesions/patients on two sides")]  # fmt: skip
    return (
        '<div class="cols"><div><h3>Plugins</h3>'
        + table(["slot", "name", "plugin", "version"], plugins_rows, numeric_from=99)
        + "<h3>Data</h3>"
        + key_values(data_pairs)
        + "</div><div><h3>Versions and environment</h3>"
        + key_values(versions)
        + "</div></div><details><summary>Full run configuration (everything needed to re-run)</summary>"
        + key_values((result.get("config") or {}).items())
        + "</details>"
    )


def _section_fidelity(result: Mapping[str, Any]) -> str:
    fidelity = result.get("fidelity") or {}
    if not fidelity:
        return '<p class="note">No fidelity metrics in this result.</p>'
    rows = []
    parts = [("all", fidelity), *((name, values) for name, values in (fidelity.get("per_class") or {}).items())]
    for name, values in parts:
        kid = esc(fmt(values.get("kid_mean"), 4))
        if values.get("kid_std") is not None:
            kid += f' <span class="ci">± {esc(fmt(values.get("kid_std"), 4))}</span>'
        rows.append(
            td(esc(name))
            + "".join(td(esc(fmt(values.get(k))), True) for k in ("n_real", "n_synthetic"))
            + td(esc(fmt(values.get("fid"), 2)), True)
            + td(esc(fmt(values.get("fid_real_floor"), 2)), True)
            + td(esc(fmt(values.get("relative_fid"), 3)), True)
            + td(kid, True)
            + td(esc(fmt(values.get("precision"))), True)
            + td(esc(fmt(values.get("recall"))), True)
        )
    header = ["images", "N real test", "N synthetic", "FID", "FID floor (real vs real)", "relative FID",
              "KID (mean ± std)", "precision", "recall"]  # fmt: skip
    info = fidelity.get("extractor_info") or {}
    note = (
        f"Synthetic images vs real test images. Extractor: {fidelity.get('extractor')}"
        + (f" ({info.get('weights')}, layer {info.get('layer')}, {info.get('dim')}-d, input {info.get('input_size')} px)"
           if info else "")
        + f". Floor: real train vs real test at N = {fidelity.get('n_real_floor', '?')}; relative FID = FID / floor "
        "(1 = as close as another real sample). Lower FID/KID is better; precision ≈ realism, recall ≈ coverage."
    )  # fmt: skip
    return table(header, rows) + f'<p class="note">{esc(note)}</p>'


def _section_memorization(result: Mapping[str, Any], closest_pairs: bytes | None) -> str:
    memo = result.get("memorization") or {}
    pairs = [(key, memo.get(key)) for key in ("near_copy_rate", "threshold_quantile", "calibration_set", "distance",
                                              "median_distance", "calibration_median_distance", "n", "n_train",
                                              "n_calibration", "extractor") if key in memo]  # fmt: skip
    for name, per_class in (memo.get("per_class") or {}).items():
        pairs.append((f"near_copy_rate ({name})", per_class.get("near_copy_rate")))
        pairs.append((f"threshold ({name})", per_class.get("threshold")))
    calibration = {"validation": "real validation images", "test": "real test images"}.get(
        memo.get("calibration_set", "test"), "held-out real images"
    )
    per_class = " of the same class" if memo.get("class_conditional") else ""
    note = (
        "near-copy rate: the fraction of synthetic images closer to their nearest train image than the "
        f"{fmt(memo.get('threshold_quantile'), 2)} quantile of {calibration}'{per_class} nearest-train distances "
        f"(a generator that copies nothing lands near {fmt(memo.get('threshold_quantile'), 2)})."
    )
    return (
        key_values(pairs)
        + f'<p class="note">{esc(note)}</p>'
        + figure(closest_pairs, "closest pairs", "Synthetic images with their nearest real train images (rows as labelled in the grid)")
    )


def _section_classification(result: Mapping[str, Any]) -> str:
    arms = result["arms"]
    names = plots._arms(list(arms))
    metrics = [(key, label) for key, label in METRICS if any(arms[a].get(key) is not None for a in names)]
    rows = []
    for arm in names:
        values = arms[arm]
        cells = td(f"<strong>{esc(arm)}</strong>")
        cells += td(esc(fmt(values.get("n_real"))), True) + td(esc(fmt(values.get("n_synthetic"))), True)
        cells += td(esc(len(values.get("seeds") or [])), True)
        cells += "".join(td(value_ci(values.get(k), values.get(f"{k}_ci95")), True, values.get(k)) for k, _ in metrics)
        rows.append(cells)
    out = table(["arm", "N real", "N synthetic", "seeds", *(label for _, label in metrics)], rows, stack=True)
    n_test, lesions = (result.get("data") or {}).get("n_test"), (result.get("data") or {}).get("n_test_lesions")
    out += (
        f'<p class="note">Mean over classifier seeds on the same real test set (n = {esc(n_test)} images, '
        f"{esc(lesions)} lesions); brackets: 95 % bootstrap CI resampling test lesions.</p>"
    )
    delta_rows = []
    for arm in names:
        for key, label in metrics:
            delta = (arms[arm].get("delta_vs_real") or {}).get(key)
            if not delta:
                continue
            delta_rows.append(
                td(esc(f"{arm} − real")) + td(esc(label))
                + td(value_ci(delta.get("value"), delta.get("ci95"), signed=True), True)
                + td(esc(fmt(delta.get("p_value"))), True)
            )  # fmt: skip
    if delta_rows:
        out += "<h3>Difference to the real arm</h3>" + table(["comparison", "metric", "Δ [95 % CI]", "p"], delta_rows, 2)
    return out


def _section_subgroups(subgroups: Any) -> str:
    """Tables per attribute from `result["subgroups"]` (dermabench.metrics.subgroups): one row per group and arm."""
    if not isinstance(subgroups, Mapping):
        return f'<pre class="mono">{esc(json.dumps(subgroups, indent=1, default=str))}</pre>'
    out = []
    for attribute, entry in subgroups.items():
        groups = entry.get("groups") if isinstance(entry, Mapping) else None
        if not isinstance(groups, Mapping):  # a shape this renderer does not know: show it rather than hide it
            out.append(f"<h3>by {esc(attribute)}</h3><pre class=mono>{esc(json.dumps(entry, indent=1, default=str))}</pre>")
            continue
        flat = []
        for name, values in groups.items():
            arms = values.get("arms") if isinstance(values.get("arms"), Mapping) else {"": {}}
            flat += [(str(name), values, arm, arms[arm] or {}) for arm in plots._arms(list(arms))]
        metrics = [(k, label) for k, label in METRICS if any(m.get(k) is not None for *_, m in flat)]
        deltas = any((m.get("delta_vs_real") or {}).get("auc") for *_, m in flat)
        html_rows = []
        for name, values, arm, m in flat:
            small = bool(values.get("too_small"))
            label = esc(name) + (' <span class="warn">(too small)</span>' if small else "")
            if values.get("note"):
                label += f' <span class="warn">({esc(values["note"])})</span>'
            cells = td(label) + td(esc(arm))
            cells += "".join(td(esc(fmt(values.get(k))), True) for k in ("n", "n_malignant", "n_lesions"))
            cells += "".join(td(value_ci(m.get(k), m.get(f"{k}_ci95")), True, m.get(k)) for k, _ in metrics)
            if deltas:
                delta = (m.get("delta_vs_real") or {}).get("auc") or {}
                cells += td(value_ci(delta.get("value"), delta.get("ci95"), signed=True), True, delta.get("value"))
            html_rows.append(("small", cells) if small else cells)  # greyed: too few test cases to read
        header = [str(attribute), "arm", "N images", "N malignant", "N lesions", *(label for _, label in metrics),
                  *(["ΔAUC vs real"] if deltas else [])]  # fmt: skip
        unknown = entry.get("n_unknown")
        note = f'<p class="note">{esc(unknown)} test images with unknown {esc(attribute)}.</p>' if unknown else ""
        out.append(f"<h3>by {esc(attribute)}</h3>" + table(header, html_rows, 2, sortable=True, stack=True) + note)
    out.append('<p class="note">Rows flagged “too small” have too few test images or cases of a class for a stable '
               "AUC; they are shown greyed and should not be read as findings.</p>")  # fmt: skip
    return "".join(out)


def _timings(result: Mapping[str, Any]) -> str:
    timings = result.get("timings_s") or {}
    rows = [td(esc(step)) + td(esc(fmt(seconds, 1)), True) for step, seconds in timings.items()]
    return table(["step", "seconds"], rows)


def run_figures(run_dir: Path, result: Mapping[str, Any], write: bool = True) -> dict[str, bytes | None]:
    """The run's ROC and delta plots as PNG bytes; with `write`, also saved next to result.json."""
    figures: dict[str, bytes | None] = {"roc.png": None, "delta_vs_real.png": None}
    predictions_path = run_dir / "predictions.json"
    if predictions_path.is_file():
        try:
            predictions = json.loads(predictions_path.read_text())
        except (OSError, ValueError) as exc:
            raise DermabenchError(f"cannot read {predictions_path}: {exc}") from None
        figures["roc.png"] = plots.png_bytes(plots.roc_figure(predictions, result))
    delta = plots.delta_figure(result)
    if delta is not None:
        figures["delta_vs_real.png"] = plots.png_bytes(delta)
    if write:
        for name, data in figures.items():
            if data is not None:
                plots.save_png(data, run_dir / name)
    return figures


def run_report(run_dir: str | Path, write_figures: bool = True) -> str:
    """The HTML report of one run folder (the one holding result.json)."""
    run_dir = Path(run_dir)
    result = _read_result(run_dir)
    figures = run_figures(run_dir, result, write=write_figures)
    plugins_ = result.get("plugins") or {}
    def name(slot: str) -> str:
        return (plugins_.get(slot) or {}).get("name", "?")
    roc_caption = ("ROC curves of every arm on the real test set (one line per classifier seed); "
                   "legend: mean AUC over seeds with the lesion-bootstrap 95 % CI, from result.json.")  # fmt: skip
    sections = [
        ("overview", "Configuration and versions", _section_overview(result)),
        ("samples", "Real vs synthetic images",
         figure(_read_optional(run_dir / "samples.png"), "real and synthetic samples",
                "Rows: real and synthetic images per class (train pool and generator output).")),
        ("fidelity", "Fidelity", _section_fidelity(result)),
        ("classification", "Classification per arm", _section_classification(result)),
        ("roc", "ROC curves and difference to real", '<div class="cols">'
         + figure(figures["roc.png"], "ROC curves", roc_caption)
         + figure(figures["delta_vs_real.png"], "delta vs real",
                  "Each arm minus the real-only arm, per metric, with the paired 95 % CIs.") + "</div>"),
        ("memorization", "Memorization", _section_memorization(result, _read_optional(run_dir / "closest_pairs.png"))),
    ]  # fmt: skip
    if result.get("subgroups"):
        sections.append(("subgroups", "Subgroups", _section_subgroups(result["subgroups"])))
    sections.append(("timings", "Timings", _timings(result)))
    title = f"{name('generator')} × {name('classifier')} on {name('dataset')}"
    subtitle = f"run {result['run_id']} · profile {result['profile']} · {result.get('created', '')}"
    return page(title, subtitle, sections)


# -- a folder of runs --------------------------------------------------------------------------------------------

_BOARD_COLUMNS = ("generator", "classifier", "seed", "seeds", "fid", "relative_fid", "near_copy_rate",
                  "auc", "accuracy", "delta_auc")  # fmt: skip


def leaderboard_html(results: Sequence[Mapping[str, Any]]) -> str:
    """One sortable table per comparable group, the best value per column marked (within the group only)."""
    rows = [leaderboard.row_of(dict(result)) for result in results]
    out = []
    for key, members in leaderboard.grouped(rows):
        columns = leaderboard.expand_columns(_BOARD_COLUMNS, members)
        best = leaderboard.best_columns(members, columns)
        html_rows = []
        for rank, row in enumerate(members, 1):
            cells = td(esc(rank), True, rank)
            for column in columns:
                parts = leaderboard.cell_parts(row, column)
                numeric = isinstance(row.get(column), (int, float))
                if parts is None:
                    cells += td("–", numeric, "")
                    continue
                text = esc(parts[0])
                if column in best[row["run_id"]]:
                    text = f'<span class="best">{text}</span>'
                if parts[1]:
                    text += f' <span class="ci">{esc(parts[1])}</span>'
                cells += td(text, numeric, row.get(column) if numeric else None)
            cells += td(f'<span class="mono">{esc(row["run_id"])}</span>')
            html_rows.append(cells)
        header = ["#", *(leaderboard.label_of(column) for column in columns), "run"]
        heading = leaderboard.group_heading(key)
        out.append(f"<h3>{esc(heading)}</h3>" + table(header, html_rows, numeric_from=0, sortable=True, stack=True))
    out.append(
        '<p class="note">Runs are ranked only against runs with the same dataset, test set, profile, image size, '
        "extractor, N real and N synthetic. ★ marks the best value of a column within its group. "
        "Click a column header to sort.</p>"
    )
    return "".join(out)


def folder_report(results_dir: str | Path, found: Sequence[tuple[Path, dict]] | None = None,
                  write_figures: bool = True) -> str:  # fmt: skip
    """The HTML report of a folder of runs: leaderboard, the synthetic-ratio plot, the list of runs."""
    results_dir = Path(results_dir)
    found = list(found) if found is not None else list(load_results(results_dir))
    results = [result for _, result in found]
    sections = [("leaderboard", "Leaderboard", leaderboard_html(results))]
    ratio = plots.synthetic_ratio_figure(results) if plots.varies_n_synthetic(results) else None
    if ratio is not None:
        data = plots.png_bytes(ratio)
        if write_figures:
            plots.save_png(data, results_dir / "synthetic_ratio.png")
        caption = "AUC and accuracy of each arm against the number of synthetic training images."
        sections.append(("ratio", "Synthetic images vs performance", figure(data, "synthetic ratio", caption)))
    run_rows = []
    for path, result in found:
        link = path.parent / REPORT_FILE
        run_id = esc(result["run_id"])
        if link.is_file():
            try:
                href = link.relative_to(results_dir).as_posix()
                run_id = f'<a href="{esc(href)}">{run_id}</a>'
            except ValueError:
                pass
        p = result["plugins"]
        run_rows.append(
            td(f'<span class="mono">{run_id}</span>') + td(esc(result.get("created")))
            + "".join(td(esc((p.get(slot) or {}).get("name"))) for slot in ("generator", "classifier", "dataset"))
            + td(esc(result["profile"])) + td(esc(result["config"].get("seed")), True)
            + td(esc(result["config"].get("n_real")), True) + td(esc(result["config"].get("n_synthetic")), True)
        )  # fmt: skip
    header = ["run", "created", "generator", "classifier", "dataset", "profile", "seed", "n_real", "n_synthetic"]
    sections.append(("runs", "Runs", table(header, run_rows, numeric_from=6, sortable=True)
                     + '<p class="note"><code>dermabench report RUN_DIR</code> renders one run in full.</p>'))  # fmt: skip
    subtitle = f"{len(found)} finished runs under {results_dir}"
    return page(f"dermabench results: {results_dir.resolve().name}", subtitle, sections)


def write_report(path: str | Path, out: str | Path | None = None,
                 found: Sequence[tuple[Path, dict]] | None = None) -> Path:  # fmt: skip
    """Render the report of a run folder (or its result.json) or a folder of runs; returns the HTML's path.

    Default output: report.html inside the folder. A folder holding a single run gets that run's report.
    `found` restricts a folder report to these (path, result) pairs.
    """
    path = Path(path)
    if path.is_file() and path.name == RESULT_FILE:
        path = path.parent
    if not path.exists():
        raise DermabenchError(f"no such run or results folder: {path}")
    if not path.is_dir():
        raise DermabenchError(f"expected a run folder or a results folder, got the file {path}")
    target = Path(out) if out is not None else path / REPORT_FILE
    if target.suffix.lower() not in (".html", ".htm"):
        raise DermabenchError(f"--out must be an .html file, got {target}")
    if (path / RESULT_FILE).is_file():
        text = run_report(path)
    else:
        found = list(found) if found is not None else list(load_results(path))
        if not found:
            raise DermabenchError(f"no finished runs (result.json) under {path}")
        text = run_report(found[0][0].parent) if len(found) == 1 else folder_report(path, found)
    return plots.write_readable(text.encode("utf-8"), target)
