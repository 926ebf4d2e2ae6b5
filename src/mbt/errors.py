"""The errors a user can cause or fix, and the exit codes of the ``mbt`` command.

Every such error is an :class:`MbtError`; the command line prints it as one line
(``mbt: error: <message>``) and exits with its :attr:`~MbtError.exit_code`. Any other exception
is a bug in mbt: the command shows its traceback. A message names the file or the config key
it is about, so the one line is enough to act on.

Exit codes of ``mbt``:

====  ==========================================================================================
0     success
1     a bug: an exception that is not an MbtError (Python prints its traceback)
2     a user error: a bad argument or config value, a missing or unreadable file, a damaged
      checkpoint, a full disk, a training run whose loss became NaN
3     some inputs failed: a command over many inputs finished the others and recorded why each
      failed one did (its output says which)
130   interrupted (Ctrl-C)
====  ==========================================================================================

The subclasses also derive from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``, ``OSError``, ``RuntimeError``), so ``except ValueError`` around a config
call keeps working.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


class MbtError(Exception):
    """Something the user can fix; shown as one line by the command line."""

    exit_code = EXIT_USER_ERROR


class ConfigError(MbtError, ValueError):
    """A config value, override, preset or command-line argument is wrong (names the key)."""


class DataError(MbtError, ValueError):
    """A data set, a cache or a split cannot be used as asked (names the folder or file)."""


class MediaError(DataError):
    """A media file cannot be read: missing, empty, corrupt, or without the wanted stream."""


class CheckpointError(MbtError, ValueError):
    """A model or checkpoint folder is missing parts, damaged, or does not fit the config."""


class MissingPathError(MbtError, FileNotFoundError):
    """A path the user named does not exist (or holds nothing mbt can use)."""


class TrainingError(MbtError, RuntimeError):
    """A training run cannot go on (e.g. its loss became NaN); its checkpoints are intact."""
