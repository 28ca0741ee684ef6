"""The error hierarchy. Owns: the few exception types rsilab raises for *user* mistakes.

Expected failures of experiments (a crash, a timeout, a patch that does not apply) are
values in results, never exceptions. An `RsilabError` is something the user must fix; the
CLI turns it into a one-line message and a non-zero exit code, never a traceback.
"""


class RsilabError(Exception):
    """A problem the user can fix. The message is one line and names file/key/value."""

    exit_code = 2


class ConfigError(RsilabError):
    """A bad `rsilab.toml`, CLI override or option."""


class DataError(RsilabError):
    """Data could not be fetched, verified or prepared."""


class WorkspaceError(RsilabError):
    """The workspace (git repository, research branch, worktrees) is not usable."""
