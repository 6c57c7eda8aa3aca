"""Teacher generation: k reasoning traces per question from an OpenAI-compatible endpoint.

* :class:`TeacherClient` wraps ``openai.AsyncOpenAI`` (a vLLM server in the cluster or a hosted
  API): images go as data URLs, ``n`` samples per request (a server that returns fewer choices
  than asked is asked again for the rest), in-flight requests bounded by a semaphore, an optional
  client-side requests-per-minute limit, and an explicit retry policy (``retry``: attempts,
  timeout, backoff, ``Retry-After`` honoured) whose every attempt is counted.
* Every response is stored in a **response cache** in object storage *as soon as it arrives*,
  keyed by what determines it (:func:`request_identity`) and holding its samples by index.
  The cache lives at the run level (``<run>/teacher-cache/``, or the bucket's), not in a
  generation's folder: a restarted worker, and every later generation whose requests did not
  change (a fixed verifier, other length buckets), find it and never pay again.
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


def teacher_messages(sample: Sample) -> list[dict[str, Any]]:
    """The chat messages sent to the teacher: images as data URLs, question, instruction."""
    text = f"{render_question(sample)}\n\n{TEACHER_INSTRUCTIONS[sample.task_type]}"
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


def request_identity(spec: TeacherSpec, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What determines a teacher's responses, and nothing else: the endpoint and model, the
    sampling parameters and the exact messages. Not the API key, the retry policy, the
    concurrency, nor anything of the curation spec that acts after the response (verifiers,
    format, lengths, dedup): editing those asks the same requests again, and the cache
    answers them."""
    return {
        "endpoint": spec.endpoint.rstrip("/"),
        "model": spec.model,
        "messages": messages,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "max_tokens": spec.max_tokens,
    }


def cache_object(key: str) -> str:
    """Object key of a cache entry (fanned out by the key's first two hex digits)."""
    return f"{key[:2]}/{key}.json"


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
    """Counts for the report's "Teacher budget": every HTTP attempt and every token billed."""

    requests: int = 0
    """Requests the endpoint answered (one per response; its attempts are counted apart)."""
    attempts: int = 0
    """HTTP attempts sent: requests, retries and attempts that failed or timed out."""
    retries: int = 0
    """Attempts that repeated an earlier one (after an error, a rate limit or a timeout)."""
    timeouts: int = 0
    """Attempts abandoned after ``retry.timeoutSeconds``: the provider may bill them all the
    same, and their tokens are not known."""
    samples: int = 0
    """Samples (``n``) asked for in the requests answered."""
    prompt_tokens: int = 0
    """Prompt tokens the endpoint reported (billed) for the requests answered."""
    completion_tokens: int = 0
    """Completion tokens the endpoint reported (billed) for the requests answered."""
    cache_hits: int = 0
    """Questions whose samples all came from the cache (no request)."""
    cache_misses: int = 0
    """Questions that needed at least one request."""
    cached_samples: int = 0
    """Samples answered from the cache (a partial hit counts its samples too)."""
    failures: int = 0
    """Questions whose requests failed after every attempt the policy allows."""
    extra: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """The counters by name (the worker's ``teacher/<model>/<name>`` keys)."""
        return {
            name: getattr(self, name)
            for name in (
                "requests",
                "attempts",
                "retries",
                "timeouts",
                "samples",
                "prompt_tokens",
                "completion_tokens",
                "cache_hits",
                "cache_misses",
                "cached_samples",
                "failures",
            )
        }


_RETRIED_STATUS = frozenset({408, 409, 429})
"""Client-error statuses worth another attempt (timeout, conflict, rate limit); every 5xx is
too. Other 4xx (bad key, bad request) would fail the same way again."""


class TeacherClient:
    """k samples per question from one teacher, with a response cache in ``cache``.

    Retries are this class's, never the SDK's (``max_retries=0``): the SDK's retries are
    invisible to the caller, so a request that timed out could be sent again and again, paid
    each time, while the report counted one. Here every attempt is counted and the spec's
    :class:`RetryPolicy` bounds them.
    """

    def __init__(
        self,
        spec: TeacherSpec,
        *,
        api_key: str,
        cache: ObjectStore | None,
    ) -> None:
        from openai import AsyncOpenAI

        self.spec = spec
        self.cache = cache
        self.stats = TeacherStats()
        self._client = AsyncOpenAI(
            base_url=spec.endpoint,
            api_key=api_key,
            timeout=spec.retry.timeout_seconds,
            max_retries=0,
        )
        self._semaphore: asyncio.Semaphore | None = None
        self._limiter: _RateLimiter | None = None
        self._inflight: dict[str, asyncio.Future[list[str]]] = {}

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
        """``samplesPerQuestion`` responses for one question: samples ``0..k-1`` of its
        request, from the cache where it has them, from the endpoint for the rest. A question
        whose request is already in flight (the same text under another id, with dedup off)
        waits for that one instead of paying for it again."""
        messages = teacher_messages(sample)
        key = request_key(request_identity(self.spec, messages))
        pending = self._inflight.get(key)
        if pending is not None:
            texts = await asyncio.shield(pending)
            self.stats.cache_hits += 1
            self.stats.cached_samples += len(texts)
            return texts
        pending = asyncio.ensure_future(self._generate(key, messages))
        self._inflight[key] = pending
        try:
            return await asyncio.shield(pending)
        finally:
            self._inflight.pop(key, None)

    async def _generate(self, key: str, messages: list[dict[str, Any]]) -> list[str]:
        wanted = self.spec.samples_per_question
        choices = await self._cached(key)
        self.stats.cached_samples += min(len(choices), wanted)
        if len(choices) >= wanted:
            self.stats.cache_hits += 1
            return [_choice_text(c) for c in choices[:wanted]]
        self.stats.cache_misses += 1
        while len(choices) < wanted:
            body = {
                "model": self.spec.model,
                "messages": messages,
                "n": wanted - len(choices),
                "temperature": self.spec.temperature,
                "top_p": self.spec.top_p,
                "max_tokens": self.spec.max_tokens,
            }
            # A server without ``n`` support returns fewer choices: asked again for the rest.
            more = await self._request(body)
            if not more:
                raise BadInput("teacher_empty", "the teacher returned no choices")
            choices = [*choices, *more]
            # Stored as soon as it arrives: a restarted worker never pays for it again.
            await self._store(key, choices)
        return [_choice_text(c) for c in choices[:wanted]]

    async def _cached(self, key: str) -> list[dict[str, Any]]:
        """The samples the cache holds for ``key``, in sample-index order (none: [])."""
        if self.cache is None:
            return []
        try:
            raw = await asyncio.to_thread(self.cache.get_bytes, cache_object(key))
        except ObjectNotFound:
            return []
        try:
            return list(json.loads(raw)["choices"])
        except (ValueError, KeyError, TypeError):
            log.warning("teacher cache entry %s is unreadable; asking the teacher", key[:12])
            return []

    async def _store(self, key: str, choices: list[dict[str, Any]]) -> None:
        if self.cache is None:
            return
        record = {"model": self.spec.model, "endpoint": self.spec.endpoint, "choices": choices}
        # put_bytes is atomic (a temp object renamed, or one S3 PUT): a reader sees the old
        # entry or the new one, never half of one.
        await asyncio.to_thread(
            self.cache.put_bytes, cache_object(key), json.dumps(record).encode()
        )

    async def _request(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """One request, sent at most ``retry.attempts`` times; its choices by index."""
        from openai import APIConnectionError, APIStatusError, APITimeoutError

        policy = self.spec.retry
        semaphore, limiter = self._loop_state()
        for attempt in range(1, policy.attempts + 1):
            retry_after: float | None = None
            async with semaphore:
                await limiter.wait()
                self.stats.attempts += 1
                if attempt > 1:
                    self.stats.retries += 1
                try:
                    response = await self._client.chat.completions.create(**body)
                except APITimeoutError:  # (a subclass of APIConnectionError)
                    self.stats.timeouts += 1
                    if not policy.retry_on_timeout or attempt == policy.attempts:
                        raise
                except APIConnectionError:
                    if attempt == policy.attempts:
                        raise
                except APIStatusError as exc:
                    status = exc.status_code
                    if (status < 500 and status not in _RETRIED_STATUS) or (
                        attempt == policy.attempts
                    ):
                        raise
                    retry_after = _retry_after(exc.response.headers.get("retry-after"))
                else:
                    return self._accepted(body, response)
            delay = policy.backoff_seconds * 2 ** (attempt - 1)
            if retry_after is not None:
                delay = retry_after
            await asyncio.sleep(min(delay, policy.max_backoff_seconds))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _accepted(self, body: dict[str, Any], response: Any) -> list[dict[str, Any]]:
        self.stats.requests += 1
        self.stats.samples += body["n"]
        if response.usage is not None:
            self.stats.prompt_tokens += response.usage.prompt_tokens or 0
            self.stats.completion_tokens += response.usage.completion_tokens or 0
        return [
            {
                "content": c.message.content,
                "reasoning": _reasoning_of(c.message),
                "finish_reason": c.finish_reason,
            }
            for c in sorted(response.choices, key=lambda c: c.index)
        ]

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


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given in seconds (an HTTP date is not honoured)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


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
