"""The error type of the data pipeline."""

from __future__ import annotations

from jirl.config import JirlError


class DataError(JirlError, ValueError):
    """A data file, record, dataset or loader state that jirl cannot use.

    Messages name the offending file (and line) or value, and say how to fix it. The CLI
    prints them without a traceback.
    """
