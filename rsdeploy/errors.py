"""User-facing errors: one line, naming where the bad input lives."""


class UserError(Exception):
    """A problem in the operator's input. The CLI prints it as one line and exits 2."""

    exit_code = 2


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
