"""The layer-pattern language: one character per residual sub-layer.

    pattern := item*            whitespace is ignored everywhere
    item    := CHAR | "(" pattern ")" "*" COUNT
    CHAR    := A L S M D R H P F E   (see `SUBLAYER_NAMES`)
    COUNT   := one or more digits, >= 1

`parse` turns a string into a tree of `Sublayer`/`Group`, `expand` flattens it to the per-layer list
the model builds, and `format_pattern(parse(p))` gives the canonical spelling (idempotent).
Every error is a `PatternError` whose message names the 1-based column and the character.
"""

from __future__ import annotations

from dataclasses import dataclass

SUBLAYER_NAMES = {
    "A": "attention",
    "L": "local_attention",
    "S": "shared_attention",
    "M": "mamba",
    "D": "mamba2",
    "R": "rglru",
    "H": "hyena",
    "P": "blend",
    "F": "mlp",
    "E": "moe",
}
CHAR_OF_NAME = {name: char for char, name in SUBLAYER_NAMES.items()}
FFN_CHARS = frozenset("FE")
MIXER_CHARS = frozenset(SUBLAYER_NAMES) - FFN_CHARS
ATTENTION_CHARS = frozenset("ALSP")


class PatternError(ValueError):
    """A malformed layer pattern; the message names the column and the character."""


@dataclass(frozen=True)
class Sublayer:
    char: str
    column: int  # 1-based column in the source string


@dataclass(frozen=True)
class Group:
    items: tuple
    count: int
    column: int


def parse(pattern: str) -> tuple:
    """Parse `pattern` into a tuple of `Sublayer` and `Group` nodes, validating it fully."""
    if not isinstance(pattern, str):
        raise PatternError(f"pattern must be a string, got {type(pattern).__name__}")
    items, position = _parse_items(pattern, 0, depth=0)
    if position < len(pattern):  # only a stray ")" stops the top level early
        raise PatternError(_at(pattern, position, "unmatched ')'"))
    if not any(True for _ in _walk(items)):
        raise PatternError("empty pattern: give at least one sub-layer, e.g. 'AF' or '(MF)*4'")
    _check_shared(pattern, expand_nodes(items))
    return items


def expand(pattern: str) -> list[Sublayer]:
    """The flat per-sub-layer list of a pattern string (groups repeated)."""
    return expand_nodes(parse(pattern))


def expand_nodes(items: tuple) -> list[Sublayer]:
    flat: list[Sublayer] = []
    for item in items:
        if isinstance(item, Group):
            flat.extend(expand_nodes(item.items) * item.count)
        else:
            flat.append(item)
    return flat


def format_pattern(items: tuple | str) -> str:
    """Canonical spelling: a word per mixer with its FFNs (`S` joins the mixer it feeds), groups kept."""
    if isinstance(items, str):
        items = parse(items)
    return _format(items)


def layer_chars(pattern: str) -> str:
    """The expanded pattern as a plain string, one character per sub-layer."""
    return "".join(sublayer.char for sublayer in expand(pattern))


def attention_ratio(chars: str) -> float:
    """r = (A + L + S + P) / mixers, over an expanded character string."""
    mixers = [c for c in chars if c in MIXER_CHARS]
    return sum(c in ATTENTION_CHARS for c in mixers) / len(mixers) if mixers else 0.0


def _format(items: tuple) -> str:
    words: list[str] = []
    current = ""
    for item in items:
        if isinstance(item, Group):
            if current:
                words.append(current)
                current = ""
            words.append(f"({_format(item.items)})*{item.count}")
        elif item.char in MIXER_CHARS and current and not current.endswith("S"):
            words.append(current)
            current = item.char
        else:
            current += item.char
    if current:
        words.append(current)
    return " ".join(words)


def _parse_items(text: str, position: int, depth: int) -> tuple[tuple, int]:
    items: list = []
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char in SUBLAYER_NAMES:
            items.append(Sublayer(char, position + 1))
            position += 1
        elif char == "(":
            group_items, end = _parse_items(text, position + 1, depth + 1)
            if end >= len(text):
                raise PatternError(_at(text, position, "'(' is never closed"))
            if not group_items:
                raise PatternError(_at(text, position, "empty group '()'"))
            count, after = _parse_count(text, end + 1, end)
            items.append(Group(tuple(group_items), count, position + 1))
            position = after
        elif char == ")":
            if depth == 0:
                raise PatternError(_at(text, position, "unmatched ')'"))
            return tuple(items), position
        else:
            valid = "".join(SUBLAYER_NAMES)
            raise PatternError(_at(text, position, f"unknown sub-layer character (valid: {valid}, '(', ')', '*')"))
    return tuple(items), position


def _parse_count(text: str, position: int, close_position: int) -> tuple[int, int]:
    while position < len(text) and text[position].isspace():
        position += 1
    if position >= len(text) or text[position] != "*":
        raise PatternError(_at(text, close_position, "a group needs a repeat count: write '(...)*K'"))
    star_position = position
    position += 1
    while position < len(text) and text[position].isspace():
        position += 1
    start = position
    while position < len(text) and text[position] in "0123456789":  # not str.isdigit: it accepts '²'
        position += 1
    if start == position:
        raise PatternError(_at(text, star_position, "'*' must be followed by a repeat count K >= 1"))
    count = int(text[start:position])
    if count < 1:
        raise PatternError(_at(text, start, f"repeat count must be >= 1, got {count}"))
    return count, position


def _check_shared(text: str, flat: list[Sublayer]) -> None:
    for index, sublayer in enumerate(flat):
        if sublayer.char != "S":
            continue
        following = flat[index + 1].char if index + 1 < len(flat) else None
        if following is None or following not in MIXER_CHARS or following == "S":
            found = f"'{following}'" if following else "the end of the pattern"
            raise PatternError(
                _at(text, sublayer.column - 1, f"'S' must be followed by a mixer (A L M D R H P), found {found}")
            )


def _walk(items: tuple):
    for item in items:
        if isinstance(item, Group):
            yield from _walk(item.items)
        else:
            yield item


def _at(text: str, position: int, message: str) -> str:
    char = text[position] if position < len(text) else ""
    return f"column {position + 1} ('{char}'): {message}"
