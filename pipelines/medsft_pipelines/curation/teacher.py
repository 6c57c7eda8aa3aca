"""Teacher generation: k reasoning traces per question from an OpenAI-compatible endpoint.

* :class:`TeacherClient` wraps ``openai.AsyncOpenAI`` (a vLLM server in the cluster or a hosted
  API): images go as data URLs, ``n`` samples per request (a server that returns fewer choices
  than asked is asked again for the rest), in-flight requests bounded by a semaphore, an optional
  client-side requests-per-minute limit, and the SDK's retries with exponential backoff (it
  honours ``Retry-After`` on 429/5xx).
* Every finished response is stored in a **request cache** in object storage, keyed by the sha256
  of the request body, *as soon as it arrives*: a restarted worker finds it and never pays for it
  again. The cache holds the raw choices, so a changed verifier re-uses them too.
* :func:`imported_traces` is the other way to get traces: a column of pre-generated responses.

Responses from reasoning servers carry the reasoning apart from the answer
(``reasoning_content`` / ``reasoning``); it is folded back as ``<think>…</think>answer`` so
every response is parsed the same way by :mod:`medsft_pipelines.answers`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsft_pipelines.specs.curation import TeacherSpec
from medsft_pipelines.storage import ObjectNotFound, ObjectStore

from .errors import BadInput, CurationError
from .format import render_question
from .sample import Sample

log = logging.getLogger("medsft.curation.teacher")

_THINK = "Reason step by step inside <think> </think> tags, then"
TEACHER_INSTRUCTIONS = {
    "mcq": f"{_THINK} give the final answer on a last line 'Answer: <option letter>'.",
    "classification": f"{_THINK} give the final answer on a last line 'Answer: <label>'.",
    "open": f"{_THINK} give the final answer on a last line 'Answer: <short answer>'.",
    "report": f"{_THINK} write the report after a line 'Answer:'.",
}
"""The instruction appended to the question for the teacher (not part of the training sample).
Reasoning models (DeepSeek-R1) think in tags anyway; others (GPT-4o) are asked to, so that
``verification.requireThink`` can hold every trace to the same structure."""


def api_key_env(modality: str) -> str:
    """Env var holding a teacher's API key: ``MEDSFT_TEACHER_TEXT_API_KEY`` / ``..._IMAGE_...``.
    The same name with ``_FILE`` appended may point to a file (a mounted Secret key) instead."""
    return f"MEDSFT_TEACHER_{modality.upper()}_API_KEY"


def resolve_api_key(modality: str, spec: TeacherSpec, environ: dict[str, str] | None = None) -> str:
    """The API key of the ``modality`` teacher from its env var or file; never logged."""
    env = os.environ if environ is None else environ
    name = api_key_env(modality)
    if env.get(name):
        return env[name].strip()
    if env.get(f"{name}_FILE"):
        path = Path(env[f"{name}_FILE"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise CurationError(
                f"cannot read the {modality} teacher's API key file {path}: {exc.strerror}"
            ) from None
    if spec.api_key_secret is not None:
        raise CurationError(
            f"the {modality} teacher needs the API key of Secret {spec.api_key_secret.name!r} "
            f"(key {spec.api_key_secret.key!r}): set {name} or {name}_FILE"
        )
    return "EMPTY"  # in-cluster servers without auth; the SDK insists on some key


def image_mime(data: bytes) -> str:
    """MIME type of encoded image bytes, from their magic number."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def teacher_messages(sample: Sample, option_style: str = "letters") -> list[dict[str, Any]]:
    """The chat messages sent to the teacher: images as data URLs, question, instruction."""
    text = f"{render_question(sample, option_style)}\n\n{TEACHER_INSTRUCTIONS[sample.task_type]}"
    if not sample.images:
        return [{"role": "user", "content": text}]
    parts: list[dict[str, Any]] = [
        {
            "type": "image_url",
            "image_url": {
                "url": f"data:{image_mime(im.data)};base64,{base64.b64encode(im.data).decode()}"
            },
        }
        for im in sample.images
    ]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def request_key(body: dict[str, Any]) -> str:
    """Cache key of a request: sha256 of its canonical JSON."""
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _choice_text(choice: dict[str, Any]) -> str:
    """``<think>reasoning</think>content`` when the server split the reasoning off, else content."""
    content = choice.get("content") or ""
    reasoning = choice.get("reasoning")
    if reasoning:
        return f"<think>{reasoning}</think>{content}"
    return content


class _RateLimiter:
    """At most ``per_minute`` request starts per minute, evenly spaced."""

    def __init__(self, per_minute: int | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class TeacherStats:
    """Counts for the report."""

    requests: int = 0
    """Requests sent to the endpoint (cache misses)."""
    samples: int = 0
    """Samples (``n``) asked for in the requests sent."""
    cache_hits: int = 0
    """Requests answered from the cache."""
    failures: int = 0
    """Questions whose requests failed after all retries."""
    completion_tokens: int = 0
    """Completion tokens the endpoint reported for the requests sent."""
    extra: dict[str, int] = field(default_factory=dict)


class TeacherClient:
    """k samples per question from one teacher, with a request cache in ``cache``."""

    def __init__(
        self,
        spec: TeacherSpec,
        *,
        api_key: str,
        cache: ObjectStore | None,
        option_style: str = "letters",
    ) -> None:
        from openai import AsyncOpenAI

        self.spec = spec
        self.cache = cache
        self.option_style = option_style
        self.stats = TeacherStats()
        self._client = AsyncOpenAI(
            base_url=spec.endpoint,
            api_key=api_key,
            timeout=spec.timeout_seconds,
            max_retries=spec.max_retries,
        )
        self._semaphore: asyncio.Semaphore | None = None
        self._limiter: _RateLimiter | None = None

    @property
    def name(self) -> str:
        """The teacher's model name (recorded on every row it produced)."""
        return self.spec.model

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    def _loop_state(self) -> tuple[asyncio.Semaphore, _RateLimiter]:
        # Created lazily: asyncio primitives bind to the running loop.
        if self._semaphore is None or self._limiter is None:
            self._semaphore = asyncio.Semaphore(self.spec.concurrency)
            self._limiter = _RateLimiter(self.spec.requests_per_minute)
        return self._semaphore, self._limiter

    async def generate(self, sample: Sample) -> list[str]:
        """``samplesPerQuestion`` responses for one question (from the cache where possible)."""
        messages = teacher_messages(sample, self.option_style)
        wanted = self.spec.samples_per_question
        texts: list[str] = []
        chunk = 0
        while len(texts) < wanted:
            body = {
                "model": self.spec.model,
                "messages": messages,
                "n": wanted - len(texts),
                "temperature": self.spec.temperature,
                "top_p": self.spec.top_p,
                "max_tokens": self.spec.max_tokens,
            }
            # The chunk number is part of the key: the follow-up request for the missing
            # samples must not hit the cache entry of the first one.
            choices = await self._cached(request_key({**body, "chunk": chunk}), body)
            if not choices:
                raise BadInput("teacher_empty", "the teacher returned no choices")
            texts.extend(_choice_text(c) for c in choices[: wanted - len(texts)])
            chunk += 1
        return texts

    async def _cached(self, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        cache_key = f"{key[:2]}/{key}.json"
        if self.cache is not None:
            try:
                raw = await asyncio.to_thread(self.cache.get_bytes, cache_key)
                self.stats.cache_hits += 1
                return json.loads(raw)["choices"]
            except ObjectNotFound:
                pass
        semaphore, limiter = self._loop_state()
        async with semaphore:
            await limiter.wait()
            self.stats.requests += 1
            self.stats.samples += body["n"]
            response = await self._client.chat.completions.create(**body)
        choices = [
            {
                "content": c.message.content,
                "reasoning": _reasoning_of(c.message),
                "finish_reason": c.finish_reason,
            }
            for c in sorted(response.choices, key=lambda c: c.index)
        ]
        if response.usage is not None:
            self.stats.completion_tokens += response.usage.completion_tokens or 0
        if self.cache is not None and choices:
            record = {"model": response.model, "choices": choices}
            await asyncio.to_thread(self.cache.put_bytes, cache_key, json.dumps(record).encode())
        return choices

    async def generate_many(self, samples: Sequence[Sample]) -> list[list[str] | BadInput]:
        """Responses per question; a question whose requests failed gets a :class:`BadInput`."""
        results = await asyncio.gather(*(self.generate(s) for s in samples), return_exceptions=True)
        out: list[list[str] | BadInput] = []
        for result in results:
            if isinstance(result, BadInput):
                out.append(result)
            elif isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self.stats.failures += 1
                # The exception class and status only: API errors can echo request content.
                status = getattr(result, "status_code", None)
                detail = result.__class__.__name__ + (f" (HTTP {status})" if status else "")
                out.append(BadInput("teacher_error", detail))
            else:
                out.append(result)
        return out


def _reasoning_of(message: Any) -> str | None:
    """The separate reasoning text of a message (vLLM's ``reasoning`` or DeepSeek's
    ``reasoning_content``), which the SDK keeps as extra fields."""
    for attr in ("reasoning_content", "reasoning"):
        value = getattr(message, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def imported_traces(sample: Sample) -> list[str]:
    """The pre-generated responses of a question (``tracesFrom``), as the teacher would return."""
    return list(sample.traces)
