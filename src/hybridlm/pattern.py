"""The layer-pattern language: one character per residual sub-layer.

    pattern := item*            whitespace is ignored everywhere
    item    := CHAR | "(" pattern ")" "*" COUNT
    CHAR    := a registered family's character (A L S M D R H P F E built in; `sublayer_names()`)
    COUNT   := one or more digits, >= 1

`parse` turns a string into a tree of `Sublayer`/`Group`, `expand` flattens it to the per-layer list
the model builds, and `format_pattern(parse(p))` gives the canonical spelling (idempotent).
Every error is a `PatternError` whose message names the 1-based column and the character.
A pattern may expand to at most MAX_SUBLAYERS sub-layers; the expanded length is computed from
the tree (sum of items times counts) before anything is expanded, so `(MF)*99999999999999` is
refused at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PatternError
from .layers.registry import attention_chars, feeding_chars, mixer_chars, sublayer_names

__all__ = ["MAX_SUBLAYERS", "PatternError", "attention_ratio", "expand", "format_pattern", "layer_chars", "parse"]
MAX_SUBLAYERS = 10_000  # a stated limit: far above any published model (Jamba-v0.1 has 64 sub-layers)
MAX_COUNT_DIGITS = 100  # longer repeat counts are refused before int() reads them


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
    length = expanded_length(items)
    if length > MAX_SUBLAYERS:
        raise PatternError(f"the pattern expands to {length:,} sub-layers; the limit is {MAX_SUBLAYERS:,}")
    _check_shared(pattern, expand_nodes(items))
    return items


def expanded_length(items: tuple) -> int:
    """Number of sub-layers `items` expands to, computed from the tree without expanding it."""
    return sum(expanded_length(item.items) * item.count if isinstance(item, Group) else 1 for item in items)


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
    """r = attention-type mixers (A L S P built in) / mixers, over an expanded character string."""
    mixer_set, attention_set = mixer_chars(), attention_chars()
    mixers = [c for c in chars if c in mixer_set]
    return sum(c in attention_set for c in mixers) / len(mixers) if mixers else 0.0


def _format(items: tuple) -> str:
    words: list[str] = []
    current = ""
    mixers, feeding = mixer_chars(), feeding_chars()
    for item in items:
        if isinstance(item, Group):
            if current:
                words.append(current)
                current = ""
            words.append(f"({_format(item.items)})*{item.count}")
        elif item.char in mixers and current and current[-1] not in feeding:
            words.append(current)
            current = item.char
        else:
            current += item.char
    if current:
        words.append(current)
    return " ".join(words)


def _parse_items(text: str, position: int, depth: int) -> tuple[tuple, int]:
    items: list = []
    names = sublayer_names()
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char in names:
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
        elif char == "*":  # a count follows a group's ')' only, and once
            raise PatternError(_at(text, position, "'*K' repeats a group: write (...)*K, once per group"))
        else:
            valid = "".join(names)
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
    digits = text[start:position].lstrip("0") or "0"
    if len(digits) > MAX_COUNT_DIGITS:  # int() of a huge digit string is slow (Python refuses > 4300 digits)
        raise PatternError(_at(text, start, f"repeat count {digits[:12]}... is over the limit of {MAX_SUBLAYERS:,}"))
    count = int(digits)
    if count < 1:
        raise PatternError(_at(text, start, f"repeat count must be >= 1, got {count}"))
    return count, position


def _check_shared(text: str, flat: list[Sublayer]) -> None:
    """A sub-layer that feeds the next mixer (`S`) must be followed by a mixer that does not."""
    feeding = feeding_chars()
    targets = sorted(mixer_chars() - feeding, key=list(sublayer_names()).index)
    for index, sublayer in enumerate(flat):
        if sublayer.char not in feeding:
            continue
        following = flat[index + 1].char if index + 1 < len(flat) else None
        if following is None or following not in targets:
            found = f"'{following}'" if following else "the end of the pattern"
            message = f"'{sublayer.char}' must be followed by a mixer ({' '.join(targets)}), found {found}"
            raise PatternError(_at(text, sublayer.column - 1, message))


def _walk(items: tuple):
    for item in items:
        if isinstance(item, Group):
            yield from _walk(item.items)
        else:
            yield item


def _at(text: str, position: int, message: str) -> str:
    char = text[position] if position < len(text) else ""
    return f"column {position + 1} ('{char}'): {message}"
