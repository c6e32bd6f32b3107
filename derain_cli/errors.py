"""derain's error hierarchy and the exit codes a shell script can rely on.

Every error a user can cause maps to one exit code, here and nowhere else.
"""

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_INTERRUPTED = 130


class DerainError(Exception):
    """Base class of every error derain reports to users."""

    exit_code = EXIT_SOME_FAILED


class UsageError(DerainError):
    """The command line or API call itself is wrong (unknown method, bad option value)."""

    exit_code = EXIT_USAGE


class WeightsError(DerainError):
    """A checkpoint is unavailable, fails sha256 verification, or does not fit its network."""

    exit_code = EXIT_WEIGHTS


class ImageError(DerainError):
    """One input image cannot be read, processed or written; a batch reports it and carries on."""

    exit_code = EXIT_SOME_FAILED
