"""``dgw``'s argument parser: global options anywhere, did-you-mean, each command's usage.

- **Global options** (``GLOBAL_OPTIONS``: ``--server``, ``--token``, ``--context``,
  ``-o``, ``-v``, ``--log-level``) are accepted before or after the command, at any
  depth (``dgw token --context up-a create ...``). ``install_globals`` adds them to
  every parser of the tree once all commands are registered, so a command added with
  ``add_command(sub)`` gets them without doing anything. A command that defines an
  option of the same name keeps its own (``dgw sidecar --server`` is the xDS address).
  The copies under the top level default to ``SUPPRESS``: a value given before the
  command is not overwritten by the sub-command's default.
- **Mistakes** are answered by the parser that owns them: an unknown option after
  ``dgw status`` prints ``dgw status``'s usage, not the top level's, and names the
  option meant (``--shrd`` → ``--shard``); an unknown command names the close ones.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OUTPUTS = ("table", "json", "yaml")
# Where the parser that matched the words is kept in the namespace (the deepest wins).
PARSER_DEST = "_dgw_parser"
# Suggestions: at least this similar (difflib's ratio), and within this of the closest.
_CUTOFF = 0.6
_MARGIN = 0.1


@dataclass(frozen=True)
class GlobalOption:
    flags: tuple[str, ...]
    dest: str
    default: Any
    help: str
    extra: dict[str, Any] = field(default_factory=dict)


GLOBAL_OPTIONS: tuple[GlobalOption, ...] = (
    GlobalOption(("--context",), "dgw_context", None,
                 "the context to use (default: $DGW_CONTEXT, else the current one: `dgw config get-contexts`)",
                 {"metavar": "NAME"}),
    GlobalOption(("--server",), "dgw_server", None,
                 "the admin API, http://HOST:PORT (default: $DGW_SERVER, else the context's); a "
                 "context's token goes only to that context's server", {"metavar": "URL"}),
    GlobalOption(("--token",), "dgw_token", None,
                 "a bearer token (default: $DGW_TOKEN, else the context's); prefer $DGW_TOKEN: "
                 "flags show in ps", {"metavar": "TOKEN"}),
    GlobalOption(("-o", "--output"), "output", "table",
                 "table (default), json or yaml, for commands that print data", {"choices": OUTPUTS}),
    GlobalOption(("-v", "--verbose"), "verbose", False,
                 "say which context, server, token source and CA the command uses", {"action": "store_true"}),
    GlobalOption(("--log-level",), "log_level", "INFO", "log level of every part (default: INFO)",
                 {"choices": LOG_LEVELS}),
)


class DgwParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors suggest what was probably meant."""

    _words: tuple[str, ...] = ()

    def _parse_known_args(self, arg_strings: list[str], *rest: Any) -> Any:
        self._words = tuple(arg_strings)  # the words this parser got, for error()
        return super()._parse_known_args(arg_strings, *rest)

    def error(self, message: str) -> NoReturn:
        choice = re.match(r"argument (?P<arg>[^:]+): invalid choice: '(?P<value>.*)' \(choose from (?P<all>.*)\)$",
                          message)
        if choice:
            options = re.findall(r"'([^']*)'", choice["all"])
            message = f"argument {choice['arg']}: invalid choice: {choice['value']!r}" + _suggest(
                choice["value"], options, f"(choose from {', '.join(options)})"
            )
        elif message.startswith("the following arguments are required"):
            # A required option "missing" is often one mistyped: name that one too.
            for word in self._words:
                if word.startswith("--") and self._unknown(word.split("=", 1)[0]):
                    message += f" ({word} is not an option here{_suggest(word.split('=', 1)[0], self._long())})"
                    break
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _long(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("--")]

    def _unknown(self, option: str) -> bool:
        return not any(s == option or (self.allow_abbrev and s.startswith(option)) for s in self._long())


def _suggest(word: str, candidates: Sequence[str], otherwise: str = "") -> str:
    """``: did you mean 'x'?`` with the closest candidates (those about as close as the
    closest: ``statsu`` is near both ``stats`` and ``status``)."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in dict.fromkeys(candidates)),
                    reverse=True)  # fmt: skip
    close = [c for ratio, c in scored if ratio >= max(_CUTOFF, scored[0][0] - _MARGIN)][:3] if scored else []
    if close:
        return ": did you mean " + " or ".join(repr(c) for c in close) + "?"
    return f" {otherwise}" if otherwise else ""


def subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The direct sub-command parsers of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from dict.fromkeys(action.choices.values())  # aliases share a parser


def install_globals(parser: argparse.ArgumentParser) -> None:
    """Add the global options to ``parser`` (with their defaults) and, defaulting to
    SUPPRESS, to every parser under it; record in each which parser it is."""
    _add_globals(parser, top=True)


def _add_globals(parser: argparse.ArgumentParser, top: bool) -> None:
    taken = parser._option_string_actions
    group = parser.add_argument_group("global options (before or after the command)")
    for option in GLOBAL_OPTIONS:
        if any(flag in taken for flag in option.flags):
            continue  # the command's own option of that name wins
        group.add_argument(*option.flags, dest=option.dest, help=option.help,
                           default=option.default if top else argparse.SUPPRESS, **option.extra)
    parser.set_defaults(**{PARSER_DEST: parser})
    for child in subparsers(parser):
        _add_globals(child, top=False)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; words nobody took are an error of the (sub-)command they follow,
    shown with its usage and, for an option, the one probably meant."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        owner: argparse.ArgumentParser = getattr(args, PARSER_DEST, parser)
        unknown = next((e for e in extras if e.startswith("-")), None)
        hint = ""
        if unknown is not None:
            known = [s for s in owner._option_string_actions if s.startswith("--")]
            hint = _suggest(unknown.split("=", 1)[0], known)
        owner.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    return args
