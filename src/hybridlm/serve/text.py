"""Tokens to text as they arrive: stop sequences, and no half characters or half stop strings sent.

Text is released once it can no longer change: a trailing U+FFFD (an unfinished UTF-8 character of
a byte tokenizer) and any tail that could still grow into a stop sequence are held back.
"""

from __future__ import annotations


class TextStream:
    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already released
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; returns the newly released text (sets `stopped` when a stop sequence appears)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        starts = [i for i in (text.find(s, self.sent) for s in self.stop) if i >= 0]
        if starts:
            self.stopped = True
            return self._release(text, min(starts))
        end = len(text) - text.endswith("\ufffd")
        end -= max((self._partial_stop(text[self.sent : end], s) for s in self.stop), default=0)
        return self._release(text, end)

    @staticmethod
    def _partial_stop(text: str, stop: str) -> int:
        """Length of the longest tail of `text` that begins `stop`."""
        return next((n for n in range(min(len(stop) - 1, len(text)), 0, -1) if text.endswith(stop[:n])), 0)

    def finish(self) -> str:
        """The text still held back, once no token will follow."""
        if self.stopped:
            return ""
        return self._release(self.tokenizer.decode(self.tokens), None)

    def _release(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        piece = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self.tokenizer.decode(self.tokens)[: self.sent]
