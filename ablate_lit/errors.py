"""User-facing errors: each is one line that says what is wrong and how to fix it."""


class AblateError(Exception):
    """A bad input or configuration. The CLI prints ``error: <message>`` and exits with status 2."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AblateError(message)
