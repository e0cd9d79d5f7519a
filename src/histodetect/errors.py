"""The one exception type for errors a user can cause (bad path, corrupt file, wrong shape)."""


class HistodetectError(Exception):
    """A problem the user can fix; the CLI prints its message as one sentence and exits non-zero."""
