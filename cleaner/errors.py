"""Errors that end a job with a one-line message and a non-zero exit code.

Anything the *user* can fix (a missing path, a wrong option, a checkpoint of
another architecture) is raised as :class:`NcleanError`; the CLI prints its
message on one line and exits with :attr:`exit_code`. Bad *samples* never
raise: they become status rows.
"""


class NcleanError(Exception):
    exit_code = 2


class ConfigError(NcleanError):
    """The command line or a setting cannot work as given."""


class InputError(NcleanError):
    """The input data cannot be read at all (not: one bad sample)."""

    exit_code = 3


class NothingScoredError(NcleanError):
    """The job ran but not a single sample could be scored."""

    exit_code = 4
