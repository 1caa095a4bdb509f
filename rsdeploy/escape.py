"""Quote a value for the file format it lands in, so any character reaches the target intact.

Every filter here is registered in the Jinja environment under its own name. Templates must
pass every operator-supplied value through the filter of their target format.
"""

import html
import json
import shlex
from urllib.parse import quote


def yaml_str(value) -> str:
    """A YAML double-quoted scalar that YAML 1.1 and 1.2 readers (PyYAML, Go's yaml) read back
    exactly: JSON's string syntax, a subset of YAML's, except for two characters JSON leaves
    to the reader: DEL (``\\x7f``: not printable in YAML) and those beyond U+FFFF
    (``\\U0001f608``: Go's yaml refuses the surrogate pairs JSON writes for them).

    Example: ``password: {{ secrets.db_password | yaml_str }}``
    """
    return '"' + "".join(_yaml_char(char) for char in str(value)) + '"'


def _yaml_char(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    if code == 0x7F:
        return "\\x7f"
    return json.dumps(char)[1:-1]


def compose_str(value) -> str:
    """A YAML scalar for a Compose file: ``$`` doubled so Compose does not interpolate it.

    Example: ``image: {{ s.backend.image | compose_str }}``
    """
    return yaml_str(str(value).replace("$", "$$"))


def json_value(value) -> str:
    """Any JSON value (string, number, list, mapping). Example: ``{{ s.celery.queues | json_value }}``"""
    return json.dumps(value)


def shell(value) -> str:
    """One POSIX shell word. Example: ``pg_isready -U {{ s.postgres.user | shell }}``"""
    return shlex.quote(str(value))


def url_part(value) -> str:
    """A percent-encoded URL component (user or password inside a URL).

    Example: ``postgresql://{{ user | url_part }}:{{ pw | url_part }}@db:5432/app``
    """
    return quote(str(value), safe="")


def compose_env(value) -> str:
    """A value in a Docker Compose v2 ``env_file`` (KEY=<this>).

    Always double-quoted: backslash, double quote, ``$`` (else ``${VAR}`` interpolates), newline
    and carriage return are backslash-escaped. Single quotes are not literal there (``\\'``
    escapes the quote), so they cannot carry every value.
    """
    text = str(value)
    for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("$", "\\$"), ("\n", "\\n"),
                          ("\r", "\\r")):
        text = text.replace(char, escaped)
    return f'"{text}"'


def systemd_env(value) -> str:
    """A value in a systemd ``EnvironmentFile`` (KEY=<this>).

    Double-quoted with backslash escapes for backslash, double quote, backtick and ``$``.
    Newlines stay literal: inside double quotes systemd keeps them, while ``\\n`` would arrive
    as a backslash and an ``n`` (checked with systemd 252).
    """
    text = str(value)
    for char in ("\\", '"', "`", "$"):
        text = text.replace(char, "\\" + char)
    return f'"{text}"'


class Expanded(str):
    """A unit-file value systemd must expand (a ``%i`` specifier, a ``${VAR}`` of the unit's
    environment), written quoted but unescaped. Its fixed parts must need no escaping.

    Example: ``Expanded("/opt/rs/slots/%i/venv/bin/uvicorn")``
    """


def systemd_arg(value) -> str:
    """One argument on a unit's ``ExecStart=`` line: quoted, with ``%`` specifiers and ``$``
    escaped (an :class:`Expanded` value is left for systemd to expand)."""
    if isinstance(value, Expanded):
        return f'"{value}"'
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def nginx_representable(value: str) -> bool:
    """Whether nginx can hold ``value`` in a quoted argument (``$`` always means a variable)."""
    return "$" not in value and not any(ord(c) < 32 or ord(c) == 127 for c in value)


def nginx_str(value) -> str:
    """One nginx argument, double-quoted; ``$`` cannot be escaped in nginx, so it is refused.

    Example: ``ssl_certificate {{ certificate | nginx_str }};``
    """
    text = str(value)
    if not nginx_representable(text):
        raise ValueError(f"{text!r} cannot be written into an nginx file "
                         "('$' or a control character)")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def alloy_str(value) -> str:
    """An Alloy syntax string literal (double-quoted) holding ``value`` exactly.

    JSON's escapes are a subset of Alloy's; non-ASCII characters stay literal, since Alloy
    rejects the surrogate pairs JSON uses beyond U+FFFF.
    Example: ``url = {{ push_url | alloy_str }}``
    """
    return json.dumps(str(value), ensure_ascii=False)


def html_text(value) -> str:
    """Text or a quoted attribute value in an HTML page: ``&``, ``<``, ``>``, ``"`` and ``'``
    become character references, so the value shows exactly as written and never as markup.

    Example: ``<p>{{ message | html_text }}</p>``
    """
    return html.escape(str(value), quote=True)


def py_literal(value) -> str:
    """A Python literal (text, number, bool, None, list, dict) for a generated Python file such
    as a site's inventory, text double-quoted. Example: ``"domain": {{ domain | py_literal }},``
    """
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes mean the same in Python
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(py_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    raise TypeError(f"no Python literal for {type(value).__name__}")


FILTERS = {
    f.__name__: f
    for f in (yaml_str, compose_str, json_value, shell, url_part, compose_env, systemd_env,
              systemd_arg, nginx_str, alloy_str, html_text, py_literal)
}
