"""Every error the harness raises for a user's input, in one hierarchy, importable without torch (so `harness list`
and friends stay fast).

`HarnessError` is what the CLI prints as one sentence naming the file, field or row (exit code 2); anything else
that escapes is a bug and keeps its traceback. Each class also derives from the built-in error it replaces, so
code that catches `ValueError` or `RuntimeError` keeps working.
"""


class HarnessError(Exception):
    """A problem with what the user gave (recipe, data, run folder, command line) or with the setup, said in a
    sentence that names the file, field or row and what to do."""


class RecipeError(HarnessError, ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


class DataError(HarnessError, ValueError):
    """A data source that cannot be read at all; the message names the source, file or row."""


class RunError(HarnessError, RuntimeError):
    """A run that cannot go on as asked: locked folder, another recipe, a missing earlier stage."""


class ReportError(RunError):
    """A run folder whose files cannot be read for a report; the message names the file."""


class DroppedAdapterError(RunError):
    """An adapter whose weights are all zero, or whose weights never reached the model that was evaluated."""


class NonFiniteLoss(RunError):
    """A NaN or infinite DPO loss: training stops and the last good checkpoint is kept. Resuming replays the same
    seeded steps, so going past it needs a changed recipe in a new run folder."""


class CompareError(HarnessError, ValueError):
    """A comparison that cannot be made as asked (unknown metric, bad DELTA, too few runs)."""


class PaperError(HarnessError, ValueError):
    """A paper file that cannot be used, or a lookup of a key it does not have; names the file and the key."""


class MetricsError(HarnessError, ValueError):
    """A metric sink that cannot start (a missing package, an unknown sink name)."""


class SetupError(HarnessError, RuntimeError):
    """A package or file the recipe needs is not installed here; the message says what to install."""
