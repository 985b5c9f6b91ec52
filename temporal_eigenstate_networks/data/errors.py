"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the user's data (missing file, bad hash, corpus too short...), told in one line.

    It subclasses ValueError so callers that already catch ValueError keep working, while the CLI can
    catch exactly this type and print the message without a traceback.
    """
