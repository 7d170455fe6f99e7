"""Data validation with Great Expectations: the raw table before prepare, the splits after it
(``suites``), run through GX (``runner``, ``expectations``) into reports (``report``).

Importing this package does not import great_expectations (that takes seconds); running a suite does.
"""
