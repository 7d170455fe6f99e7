"""The one text normalization, imported by prepare, training, evaluation and serving.

Its settings travel with the model directory (``textclf_preprocessing.json``, written by
``textclf.model.predictor``) so serving rebuilds exactly what training saw.
"""

from __future__ import annotations

import re
import unicodedata

from textclf.config import NormalizeConfig

_WHITESPACE = re.compile(r"\s+")
# Tab, newline and the like become spaces; every other control (Cc), format (Cf: BOM, zero-width
# space/joiners, soft hyphen, bidi marks) and lone-surrogate (Cs: undecodable bytes) char is removed.
_KEEP_AS_SPACE = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85"}
_DROP_CATEGORIES = {"Cc", "Cf", "Cs"}


def _strip_invisible(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _KEEP_AS_SPACE:
            out.append(" ")
        elif unicodedata.category(ch) not in _DROP_CATEGORIES:
            out.append(ch)
    return "".join(out)


def normalize(text: str, cfg: NormalizeConfig) -> str:
    """NFKC (full-width → half-width), drop invisible/control chars, collapse whitespace."""
    if cfg.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if cfg.strip_invisible:
        text = _strip_invisible(text)
    if cfg.collapse_whitespace:
        text = _WHITESPACE.sub(" ", text).strip()
    if cfg.lowercase:
        text = text.lower()
    return text
