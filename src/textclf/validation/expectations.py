"""Custom Great Expectations for text data: built-in expectations with fixed defaults and a description.

GX 1.x customizes an expectation by subclassing a built-in one; the description is what Data Docs
show. This module imports ``great_expectations`` at the top, so import it only inside functions
(the GX import takes seconds).
"""

from __future__ import annotations

import great_expectations as gx

# Undecodable bytes: ``read_table`` keeps them as lone surrogates (surrogateescape), but pandas 3
# string columns are Arrow-backed and cannot hold surrogates, so ``gx_safe`` turns each into U+FFFD
# before GX sees the frame. A U+FFFD already in the file is also an earlier decoding failure.
REPLACEMENT_CHAR = "\ufffd"

# Empty, or only whitespace / zero-width characters (the ones normalize() strips as invisible).
BLANK_REGEX = "^[\\s\u200b\u200c\u200d\u2060\ufeff]*$"


class ExpectTextNotBlank(gx.expectations.ExpectColumnValuesToNotMatchRegex):
    """Text is not empty and not only whitespace or zero-width characters."""

    regex: str = BLANK_REGEX
    description: str = "Text is not empty or whitespace-only"


class ExpectTextDecodableAsUtf8(gx.expectations.ExpectColumnValuesToNotMatchRegex):
    """Text decoded as UTF-8 without undecodable bytes (shown as U+FFFD)."""

    regex: str = REPLACEMENT_CHAR
    description: str = "Text is valid UTF-8 (no undecodable bytes, no U+FFFD replacement characters)"


class ExpectNoLabelConflicts(gx.expectations.ExpectColumnValuesToBeUnique):
    """On the table of distinct (text, label) pairs: a text appearing twice carries two labels."""

    column: str = "text"
    description: str = (
        "Each distinct text carries a single label (rows: distinct text/label pairs; "
        "a repeated text is a label conflict)"
    )


class ExpectSplitsDisjoint(gx.expectations.ExpectColumnValuesToBeUnique):
    """On the table of distinct (text, split) pairs: a text appearing twice is in two splits."""

    column: str = "text"
    description: str = (
        "No text is shared between train/val/test (rows: distinct text/split pairs; "
        "a repeated text leaks across splits)"
    )
