"""User-facing errors: one line, naming where the bad input lives."""

import re


def on_one_line(text: str) -> str:
    """``text`` with each line break (and the blanks around it) made one space.

    Example: ``on_one_line("bad value\\n  here")`` -> ``"bad value here"``
    """
    return re.sub(r"\s*[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+\s*", " ", text).strip()


def describe(exc: BaseException) -> str:
    """``Type: message`` of any exception, on one line, even when its ``str()`` fails.

    Example: ``describe(NameError("name 'x' is not defined"))`` ->
    ``"NameError: name 'x' is not defined"``
    """
    try:
        message = str(exc)
    except Exception:  # e.g. pyinfra's UnexpectedExternalError, whose str() raises
        message = ""
    name = type(exc).__name__
    return on_one_line(f"{name}: {message}" if message else name)


class UserError(Exception):
    """A problem in the operator's input. The CLI prints it as one line and exits 2."""

    exit_code = 2

    def __str__(self) -> str:
        return on_one_line(super().__str__())


class SettingsError(UserError):
    """A bad setting or secret, located by source file, host and key.

    Example::

        raise SettingsError("inventories/prod.py", "web1", "tls.email", "not an e-mail address")
        # -> inventories/prod.py: host web1: tls.email: not an e-mail address
    """

    def __init__(self, source: str, host: str | None, key: str | None, message: str):
        self.source, self.host, self.key, self.message = source, host, key, message
        parts = [source]
        if host:
            parts.append(f"host {host}")
        if key:
            parts.append(key)
        parts.append(message)
        super().__init__(": ".join(parts))


class CommandFailed(UserError):
    """A command's work failed on a host (not the operator's input): one line, exit code 1.

    Example: ``raise CommandFailed("rs1: rs-backup failed (exit 1)")``
    """

    exit_code = 1
