"""``config import``: a node's existing config directory taken into the ``[agent]`` table.

A node migrated from the reference layout already has its agent's whole configuration in a
directory of option files (``mount/config-map/``: 26 files in ctripcloud/cilium-compose). Before
``config render`` manages that directory, every one of those options must be in the managed
configuration, or a pruning render would delete it. This module reads such a directory and
writes the same options as TOML for the ``[agent]`` table of the config file: printed for the
operator to add, or added to the file itself (``--write``), atomically, with the rest of the file
kept as it is. Both add only what the table lacks; an option the table already sets to another
value is refused (the operator decides which value the node keeps).

Values are kept byte for byte: each file's text becomes a TOML basic string with escapes, so a
trailing newline is written as ``\\n`` and a multi-line value keeps every line break (a TOML
multi-line string would not do: it drops a newline right after its opening quotes, and parsers
may normalize line endings). ``config render`` then writes each file back with exactly the
bytes it had. The agent trims surrounding whitespace when it reads an option, so an operator
may drop such a ``\\n`` later without changing anything for the agent (a render compares as
the agent reads). What a TOML string cannot carry is refused, with one line naming the file:
an entry whose name is not an option name, anything but a regular file, more than 1 MiB,
bytes that are not UTF-8, a NUL byte.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from supervisor.base.errors import ConfigError, StateError
from supervisor.base.files import atomic_write
from supervisor.node.agentconfig import read_option_files, same_as_read, validate_options

#: Escapes of a TOML basic string; other control characters are written as ``\\uXXXX``.
_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
#: An ``[agent]`` table header on a line of its own (a comment may follow).
_AGENT_HEADER: Final = re.compile(r"^[ \t]*\[[ \t]*agent[ \t]*\][ \t]*(?:#[^\n]*)?$", re.MULTILINE)
#: A config file larger than this is not one (as storage.config refuses it).
_MAX_CONFIG_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Imported:
    """The options read from a directory: name -> the file's exact text, sorted by name."""

    source: Path
    options: Mapping[str, str]
    #: What a render of these options would refuse or warn about (import still carries them).
    warnings: tuple[str, ...] = ()


# --- reading the directory ---------------------------------------------------------------------


def read_directory(directory: Path) -> Imported:
    """Every option of ``directory`` with its exact text; ConfigError (one line naming the
    file) for anything a TOML string or the agent cannot carry, StateError for I/O errors."""
    found = read_option_files(directory, "not a directory (expected one file per option)", _refuse)
    if found is None:
        raise ConfigError(f"{directory}: no such directory")
    if not found:
        raise ConfigError(f"{directory}: holds no option files; nothing to import")
    options = {name: _text(directory / name, data) for name, data in found.items()}
    try:
        warnings = validate_options(options, str(directory))
    except ConfigError as exc:
        warnings = (f"config render would refuse this until it is fixed: {exc}",)
    return Imported(directory, options, warnings)


def _refuse(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path}: cannot import: {why}")


def _text(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: cannot import: not UTF-8 text (byte {exc.start}), which a TOML string "
            "cannot carry"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path}: cannot import: contains a NUL byte, which no option holds")
    return text


# --- writing TOML ------------------------------------------------------------------------------


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string that parses back to exactly ``value``."""
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _in_comment(path: Path) -> str:
    """A path as TOML comment text may show it: no control character."""
    return "".join("?" if ch < " " or ch == "\x7f" else ch for ch in str(path))


def _comment(imported: Imported) -> str:
    """Where the options came from, as TOML comment lines."""
    return (
        f"# {len(imported.options)} options imported by `agent-supervisor config import` from "
        f"{_in_comment(imported.source)}\n"
        "# (each value is its file's text byte for byte; a trailing newline is \\n)\n"
    )


def _lines(options: Mapping[str, str]) -> str:
    return "".join(f"{name} = {toml_string(options[name])}\n" for name in sorted(options))


def agent_table(imported: Imported) -> str:
    """The ``[agent]`` table holding the imported options, with a comment saying where from.

    Checked by parsing it back: the table must give exactly the imported text of every option.
    """
    text = _comment(imported) + "[agent]\n" + _lines(imported.options)
    if tomllib.loads(text).get("agent") != dict(imported.options):  # pragma: no cover - a bug
        raise ConfigError(f"{imported.source}: the options do not survive as TOML; please report")
    return text


# --- adding to the config file -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Addition:
    """What an import adds to one config file: the options its ``[agent]`` table lacks, and the
    ones it already has with the same value (as the agent reads it)."""

    config: Path
    source: Path
    added: Mapping[str, str]
    present: tuple[str, ...]
    #: The file's text ("" when it does not exist) and mode, as read.
    text: str = field(repr=False)
    mode: int = 0o644

    @property
    def has_table(self) -> bool:
        """True when the file already has an ``[agent]`` table (the snippet goes under it)."""
        return "agent" in tomllib.loads(self.text)

    def snippet(self) -> str:
        """What to add by hand: a whole ``[agent]`` table, or the lines to put under the file's
        own ``[agent]`` header when it has one."""
        if not self.added:
            return (
                f"# {_in_comment(self.config)} already holds every option of "
                f"{_in_comment(self.source)}\n"
            )
        shown = Imported(self.source, self.added)
        if not self.has_table:
            return agent_table(shown)
        head = f"# add under the [agent] table of {_in_comment(self.config)}:\n"
        return head + _comment(shown) + _lines(self.added)

    def to_json(self, *, written: bool) -> dict[str, Any]:
        """The addition for ``config import --json``."""
        return {
            "config": str(self.config),
            "source": str(self.source),
            "added": dict(self.added),
            "present": list(self.present),
            "written": written,
        }


def prepare(config: Path, imported: Imported, current: Mapping[str, str]) -> Addition:
    """What importing ``imported`` adds to the config file at ``config``, writing nothing.

    ``current`` is the file's ``[agent]`` table as loaded. An option it already has with the
    same value (as the agent reads it) is left alone; one it has with another value is a
    conflict the operator resolves (ConfigError naming the file): an import never overwrites
    a managed value, nor picks one silently.
    """
    added: dict[str, str] = {}
    present: list[str] = []
    for name, value in sorted(imported.options.items()):
        if name not in current:
            added[name] = value
        elif same_as_read(current[name].encode(), value):
            present.append(name)
        else:
            raise ConfigError(
                f"{imported.source / name}: {config} already sets agent.{name} = "
                f"{current[name]!r}, the file says {value!r}: make them agree, then import again"
            )
    text, mode = _read_config(Path(os.path.realpath(config)))
    return Addition(config, imported.source, added, tuple(present), text, mode)


def write_into(addition: Addition) -> bool:
    """Add the options to the config file, atomically, every other byte kept (True), or
    nothing when there is nothing to add (False). The file is created 0644 when missing."""
    if not addition.added:
        return False
    target = Path(os.path.realpath(addition.config))
    new_text = _with_options(addition)
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        atomic_write(target, new_text.encode(), mode=addition.mode)
    except OSError as exc:
        raise StateError(f"{addition.config}: cannot write: {exc.strerror or exc}") from None
    return True


def _read_config(path: Path) -> tuple[str, int]:
    """The config file's text and mode ("" and 0644 when it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "", 0o644
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: not a regular config file of at most 1 MiB")
    try:
        return path.read_bytes().decode("utf-8"), stat.S_IMODE(st.st_mode)
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _with_options(addition: Addition) -> str:
    """The file's text with the added options in its ``[agent]`` table (appended as a new
    table when it has none), verified by parsing: everything else must parse as before."""
    text, config = addition.text, addition.config
    before = tomllib.loads(text)  # the caller loaded this file: it parses
    if "agent" not in before:
        sep = "" if not text or text.endswith("\n") else "\n"
        new_text = text + sep + ("\n" if text.strip() else "") + addition.snippet()
    else:
        headers = list(_AGENT_HEADER.finditer(text))
        if len(headers) != 1:
            raise ConfigError(
                f"{config}: [agent] is not one '[agent]' table header line, so the import cannot "
                "add to it: run `config import` without --write and add its lines by hand"
            )
        at = headers[0].end()
        shown = Imported(addition.source, addition.added)
        lines = _comment(shown) + _lines(addition.added)
        new_text = text[:at] + "\n" + lines.rstrip("\n") + (text[at:] or "\n")
    expected = dict(before) | {"agent": dict(before.get("agent", {})) | dict(addition.added)}
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise ConfigError(
            f"{config}: the [agent] table cannot be extended safely in this file: run "
            "`config import` without --write and add its lines by hand"
        )
    return new_text
