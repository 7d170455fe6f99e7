"""Evaluation plots as PNG files, drawn on the Agg canvas directly (no pyplot global state)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_DPI = 110
# Label names may be Chinese: these fonts fill in glyphs DejaVu lacks, when installed.
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    import matplotlib
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    fonts = ["DejaVu Sans", *(f for f in _CJK_FONTS if f in installed)]
    with matplotlib.rc_context({"font.family": fonts}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font")
        fig.tight_layout()
        # No "Software" metadata: the bytes do not change with the matplotlib version.
        fig.savefig(path, format="png", metadata={"Software": None})


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> None:
    """Counts, shaded by the share of the gold row (rows = gold, columns = predicted)."""
    cm = np.asarray(matrix, dtype=float)
    k = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = _figure(max(3.5, 0.6 * k + 2.5), max(3.5, 0.6 * k + 2.5))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=list(labels), rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), labels=list(labels))
    ax.set(xlabel="predicted", ylabel="gold", title=f"{title}: confusion matrix")
    for i in range(k):
        for j in range(k):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=color, fontsize=9)
    _save(fig, path)


def reliability(bins: Sequence[dict[str, Any]], ece: float, path: Path, title: str) -> None:
    """Accuracy per confidence bin against the diagonal."""
    filled = [b for b in bins if b["count"]]
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    ax.bar(
        [(b["lower"] + b["upper"]) / 2 for b in filled],
        [b["accuracy"] for b in filled],
        width=1.0 / max(len(bins), 1) * 0.95,
        alpha=0.8,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top label)",
        ylabel="accuracy",
        title=f"{title}: reliability (ECE={ece:.3f})",
    )
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def curves(points: Sequence[dict[str, Any]], x: str, y: str, path: Path, title: str) -> None:
    """One line per class from long-format points (``class``, ``x``, ``y``)."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    for cls in dict.fromkeys(p["class"] for p in points):
        mine = [p for p in points if p["class"] == cls]
        ax.plot([p[x] for p in mine], [p[y] for p in mine], label=str(cls))
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=x, ylabel=y, title=title)
    if points:
        ax.legend(fontsize=8)
    _save(fig, path)
