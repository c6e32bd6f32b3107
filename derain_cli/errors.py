"""derain's error hierarchy and the exit codes a shell script can rely on.

Every error a user can cause maps to one exit code, here and nowhere else.
"""

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as shells report it
EXIT_TERMINATED = 143  # SIGTERM (kill, a job scheduler, torchrun's agent): 128 + 15


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


class HarmfulResult(DerainError):
    """A trained result does more harm to the user's photos than what it started from: not saved."""

    exit_code = EXIT_SOME_FAILED


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM. ``checkpoint`` is the resumable file written
    at the step boundary where it stopped (``step``), None when none was written."""

    def __init__(self, signum: int, checkpoint=None, step: int | None = None) -> None:
        import signal

        self.signum, self.checkpoint, self.step = signum, checkpoint, step
        self.terminated = signum == signal.SIGTERM
        self.exit_code = EXIT_TERMINATED if self.terminated else EXIT_INTERRUPTED
        self.what = "terminated (SIGTERM)" if self.terminated else "interrupted (Ctrl-C)"
        super().__init__(self.what)
