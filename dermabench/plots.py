"""Figures for reports and papers, drawn with matplotlib (Agg) from result JSON and predictions.json alone.

* :func:`roc_figure` — the ROC curve of every arm on one plot (one curve per classifier seed).
* :func:`delta_figure` — each arm's difference to `real` per metric, with its 95 % CI.
* :func:`synthetic_ratio_figure` — AUC and accuracy against the number of synthetic images,
  for a folder of runs that vary `n_synthetic`.

Figures are plain `matplotlib.figure.Figure` objects rendered by the Agg canvas: no pyplot
state and no change to the user's backend. Colours follow the Okabe–Ito palette (safe for the common colour-vision deficiencies),
and every arm keeps its colour in every figure. :func:`save_png` writes atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from dermabench.results import write_bytes_atomic

__all__ = ["ARM_COLOURS", "OKABE_ITO", "delta_figure", "png_bytes", "roc_figure", "save_png",
           "synthetic_ratio_figure", "varies_n_synthetic"]  # fmt: skip

#: Okabe & Ito (2008), "Color Universal Design"; black last
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
ARM_ORDER = ("real", "real+synthetic", "synthetic", "real+augment")
ARM_COLOURS = {"real": "#000000", "real+synthetic": "#0072B2", "synthetic": "#D55E00", "real+augment": "#009E73"}
ARM_MARKERS = {"real": "o", "real+synthetic": "s", "synthetic": "^", "real+augment": "D"}
DELTA_METRICS = (("auc", "AUC"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                 ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("f1", "F1"))  # fmt: skip
DPI = 150
_STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
          "axes.spines.top": False, "axes.spines.right": False}  # fmt: skip


def arm_colour(arm: str) -> str:
    if arm in ARM_COLOURS:
        return ARM_COLOURS[arm]
    return OKABE_ITO[sum(map(ord, arm)) % 7]


def _arms(names: Sequence[str]) -> list[str]:
    return sorted(names, key=lambda arm: (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), arm))


def _ci_text(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    if ci and None not in ci:
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


# -- figures -----------------------------------------------------------------------------------------------------


def roc_curve_points(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | None:
    """False- and true-positive rates of the ROC curve, or None when the labels hold one class."""
    from sklearn.metrics import roc_curve

    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=float), pos_label=1)
    return fpr, tpr


def roc_figure(predictions: Mapping[str, Any], result: Mapping[str, Any] | None = None) -> Figure:
    """ROC curves of every arm on the real test set; one line per classifier seed, the legend gives the AUC.

    predictions: the run's predictions.json (`label`, `p_malignant` {arm: [one list per seed]}).
    result: the run's result.json, for the AUC and CI in the legend (from the JSON, not recomputed).
    """
    arms_in_result = (result or {}).get("arms") or {}
    labels = predictions["label"]
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(5.2, 6.0), layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], linestyle=":", color="#999999", linewidth=1, label="chance (AUC 0.5)")
        for arm in _arms(list(predictions["p_malignant"])):
            per_seed = predictions["p_malignant"][arm]
            values = arms_in_result.get(arm) or {}
            label = f"{arm}: AUC {_ci_text(values.get('auc'), values.get('auc_ci95'))}"
            if len(per_seed) > 1:
                label += f", {len(per_seed)} seeds"
            for k, scores in enumerate(per_seed):
                points = roc_curve_points(labels, scores)
                if points is None:
                    continue
                ax.step(*points, where="post", color=arm_colour(arm), linewidth=1.8 if k == 0 else 1.0,
                        alpha=1.0 if k == 0 else 0.45, label=label if k == 0 else None)  # fmt: skip
        n = len(labels)
        positives = int(sum(labels))
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
               xlabel="false-positive rate (1 − specificity)", ylabel="true-positive rate (sensitivity)",
               title=f"ROC on the real test set (n = {n}, {positives} malignant)")  # fmt: skip
        ax.grid(True, linewidth=0.4, alpha=0.5)
        fig.legend(loc="outside lower center", frameon=False, title="arm: AUC [95 % CI]")
    return fig


def delta_figure(result: Mapping[str, Any]) -> Figure | None:
    """Difference of every arm to `real`, per metric, with the lesion-bootstrap 95 % CI; None without such arms."""
    arms = [arm for arm in _arms(list(result["arms"])) if arm != "real" and result["arms"][arm].get("delta_vs_real")]
    if not arms:
        return None
    metrics = [(key, name) for key, name in DELTA_METRICS
               if any(key in result["arms"][arm]["delta_vs_real"] for arm in arms)]  # fmt: skip
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(6.4, 0.55 * len(metrics) * max(1, len(arms)) ** 0.5 + 1.4), layout="constrained")
        ax = fig.subplots()
        height = 0.8 / len(arms)
        for a, arm in enumerate(arms):
            deltas = result["arms"][arm]["delta_vs_real"]
            ys, xs, lo, hi = [], [], [], []
            for m, (key, _) in enumerate(metrics):
                delta = deltas.get(key) or {}
                if delta.get("value") is None:
                    continue
                ci = delta.get("ci95") or [delta["value"], delta["value"]]
                ci = [delta["value"] if c is None else c for c in ci]
                ys.append(m + (a - (len(arms) - 1) / 2) * height)
                xs.append(delta["value"])
                lo.append(delta["value"] - ci[0])
                hi.append(ci[1] - delta["value"])
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt=ARM_MARKERS.get(arm, "o"), color=arm_colour(arm), capsize=3,
                        markersize=5, linewidth=1.4, label=f"{arm} − real")  # fmt: skip
        ax.axvline(0, color="#555555", linewidth=1, linestyle="--")
        ax.set_yticks(range(len(metrics)), [name for _, name in metrics])
        ax.invert_yaxis()
        ax.set_xlabel("difference to the real arm (metric units, 0–1 scale; bars: 95 % CI)")
        ax.set_title("Paired difference to the real-only arm")
        ax.grid(True, axis="x", linewidth=0.4, alpha=0.5)
        ax.legend(loc="best", frameon=False)
    return fig


def _series_key(result: Mapping[str, Any]) -> tuple:
    """What a line of the synthetic-ratio plot holds fixed: everything but n_synthetic and the run seed."""
    config = result["config"]
    return (result["plugins"]["generator"]["name"], result["plugins"]["classifier"]["name"],
            result["plugins"]["dataset"]["name"], config.get("test_dataset") or "", result["profile"],
            config.get("image_size"), result["arms"]["real"]["n_real"])  # fmt: skip


def varies_n_synthetic(results: Sequence[Mapping[str, Any]]) -> bool:
    """True when some runs differ only in n_synthetic (and seed): the synthetic-ratio plot has a line to draw."""
    seen: dict[tuple, set] = {}
    for result in results:
        seen.setdefault(_series_key(result), set()).add(result["config"].get("n_synthetic"))
    return any(len(values) > 1 for values in seen.values())


def synthetic_ratio_figure(results: Sequence[Mapping[str, Any]]) -> Figure | None:
    """AUC and accuracy of every arm against the number of synthetic images; None when no series varies it.

    One line per (generator, classifier, dataset, profile, image size, n_real) and arm, through the mean over
    runs (run seeds) at each n_synthetic; error bars are each run's own 95 % CI. `real` does not use synthetic
    images and is drawn dashed, as the reference.
    """
    series: dict[tuple, list[Mapping[str, Any]]] = {}
    for result in results:
        series.setdefault(_series_key(result), []).append(result)
    series = {key: runs for key, runs in series.items() if len({r["config"].get("n_synthetic") for r in runs}) > 1}
    if not series:
        return None
    linestyles = ("-", "-.", (0, (5, 1)), (0, (1, 1)), (0, (3, 1, 1, 1)))
    all_x = [run["config"]["n_synthetic"] for runs in series.values() for run in runs]
    all_arms = _arms(list({arm for runs in series.values() for run in runs for arm in run["arms"]}))
    # arms side by side at each n_synthetic, so their error bars do not hide each other
    step = 0.012 * (max(all_x) - min(all_x))
    dodge = {arm: (i - (len(all_arms) - 1) / 2) * step for i, arm in enumerate(all_arms)}
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(10, 4.4), layout="constrained")
        axes = fig.subplots(1, 2, sharex=True)
        for s, (key, runs) in enumerate(sorted(series.items(), key=lambda kv: str(kv[0]))):
            generator, classifier, dataset, _, profile, _, n_real = key
            name = f"{generator}/{classifier}, n_real={n_real}" if len(series) > 1 else ""
            arms = _arms(list({arm for run in runs for arm in run["arms"]}))
            for ax, metric, metric_name in ((axes[0], "auc", "AUC"), (axes[1], "accuracy", "accuracy")):
                for arm in arms:
                    points: dict[int, list[tuple[float, Sequence[float] | None]]] = {}
                    for run in runs:
                        values = run["arms"].get(arm) or {}
                        if values.get(metric) is not None:
                            points.setdefault(run["config"]["n_synthetic"], []).append(
                                (values[metric], values.get(f"{metric}_ci95"))
                            )
                    if not points:
                        continue
                    xs = sorted(points)
                    colour, style = arm_colour(arm), "--" if arm == "real" else linestyles[s % len(linestyles)]
                    label = f"{arm} ({name})" if name else arm
                    shifted = [x + dodge[arm] for x in xs]
                    ax.plot(shifted, [np.mean([v for v, _ in points[x]]) for x in xs], linestyle=style, color=colour,
                            marker=ARM_MARKERS.get(arm, "o"), markersize=5, linewidth=1.5, label=label)  # fmt: skip
                    for x in xs:
                        for value, ci in points[x]:
                            if ci and None not in ci:
                                ax.errorbar([x + dodge[arm]], [value], yerr=[[value - ci[0]], [ci[1] - value]], color=colour,
                                            alpha=0.55, capsize=2.5, linewidth=1, fmt="none")  # fmt: skip
                ax.set_ylabel(f"{metric_name} on the real test set (0–1)")
                ax.set_title(f"{metric_name} vs synthetic images added")
        for ax in axes:
            ax.set_xlabel("synthetic training images (n_synthetic)")
            ax.grid(True, linewidth=0.4, alpha=0.5)
        axes[1].legend(loc="best", frameon=False, title="arm (dashed: real only)")
        fig.suptitle(f"{dataset}, profile {profile}: mean over runs; bars: each run's 95 % CI", fontsize=10)
    return fig


# -- files -------------------------------------------------------------------------------------------------------


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes, rendered by Agg (no pyplot state, no GUI backend; no version stamp in the file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08, metadata={"Software": None})
    return buffer.getvalue()


def save_png(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write PNG bytes atomically (temp file, fsync, rename) with the usual 0666 & ~umask permissions."""
    return write_readable(data, path)


def write_readable(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write `data` atomically (it replaces an older file) with the usual 0666 & ~umask permissions."""
    path = write_bytes_atomic(Path(path), data)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path
