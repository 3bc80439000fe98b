"""The `/v1/completions` request as OpenAI defines it, validated strictly (unknown fields and wrong
types are refused), and OpenAI-style error objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

PROMPT_TYPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Fields the server honours; OpenAI fields it cannot honour are accepted only at their no-op value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1)  # not OpenAI's; vLLM's extension, sent by clients as extra_body
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] = False
    presence_penalty: Literal[0, 0.0] = 0
    frequency_penalty: Literal[0, 0.0] = 0
    best_of: Literal[1] | None = None
    user: str | None = None

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_a_stream(cls, options, info: ValidationInfo):
        if options is not None and not info.data.get("stream"):  # as OpenAI refuses it
            raise PydanticCustomError("stream_options", "only allowed when stream is true")
        return options

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a string, or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


@dataclass
class Limits:
    """What one request may ask: prompt + completion within `max_context`, completion within `max_tokens`."""

    max_context: int = 8192
    max_tokens: int = 1024
    max_stop: int = 4


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
