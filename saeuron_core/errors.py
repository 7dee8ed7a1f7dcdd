"""The one exception type the library raises for bad input; the CLI prints it as one line."""


class SaeuronError(ValueError):
    """Bad input or state, with a message that names the problem."""
