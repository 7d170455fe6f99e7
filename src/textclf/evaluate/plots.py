"""Evaluation plots as PNG files.

Figures are built on the Agg canvas directly (no ``pyplot``): no global backend switch, no figure
registry to leak, safe in worker threads and on machines without a display.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

_DPI = 110
P = ParamSpec("P")
R = TypeVar("R")
# Label names may be Chinese; these fonts are used for glyphs DejaVu lacks, when installed.
_CJK_FONTS = (
    "Noto Sans CJK SC",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Arial Unicode MS",
)


@cache
def _font_families() -> tuple[str, ...]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ("DejaVu Sans", *(name for name in _CJK_FONTS if name in installed))


@contextmanager
def _style() -> Iterator[None]:
    """Local font fallback; a label no installed font can draw shows as boxes instead of warning."""
    import matplotlib

    with matplotlib.rc_context({"font.family": list(_font_families())}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font", category=UserWarning)
        yield


def _styled(fn: Callable[P, R]) -> Callable[P, R]:
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _style():
            return fn(*args, **kwargs)

    return wrapper


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # No "Software" metadata so the bytes do not change with the matplotlib version.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


@_styled
def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str
) -> Path:
    """Counts with row-normalized shading (rows = gold, columns = predicted)."""
    cm = np.asarray(matrix, dtype=float)
    k = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(3.5, 0.6 * k + 2.5)
    fig = _new_figure(size, size)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of gold row")
    ax.set_xticks(
        range(k), labels=list(labels), rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center"
    )
    ax.set_yticks(range(k), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.5 else "black",
                fontsize=9,
            )
    return _save(fig, path)


@_styled
def plot_reliability(bins: Sequence[dict[str, Any]], ece: float | None, path: Path, title: str) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with bin counts below."""
    fig = _new_figure(4.5, 5.0)
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    acc = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins]
    ax.bar(centers, acc, width=width * 0.95, color="tab:blue", alpha=0.8, label="accuracy")
    filled = [b for b in bins if b["count"]]
    ax.plot(
        [b["mean_confidence"] for b in filled],
        [b["accuracy"] for b in filled],
        "o",
        color="tab:orange",
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title if ece is None else f"{title} (ECE={ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    ax_count.bar(centers, [b["count"] for b in bins], width=width * 0.95, color="gray")
    ax_count.set_xlabel("confidence (top label)")
    ax_count.set_ylabel("count")
    return _save(fig, path)


@_styled
def plot_roc(curves: dict[str, Any], path: Path, title: str) -> Path:
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    roc = curves["roc"]
    ax.plot(roc["fpr"], roc["tpr"], color="tab:blue", label=f"AUC={curves['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title} (positive: {curves['positive_label']})")
    ax.legend(loc="lower right")
    return _save(fig, path)


@_styled
def plot_pr(curves: dict[str, Any], path: Path, title: str) -> Path:
    fig = _new_figure(4.5, 4.5)
    ax = fig.add_subplot()
    pr = curves["pr"]
    ax.plot(pr["recall"], pr["precision"], color="tab:green", label=f"AP={curves['average_precision']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title} (positive: {curves['positive_label']})")
    ax.legend(loc="lower left")
    return _save(fig, path)
