"""The teacher client against a real HTTP server speaking the chat-completions protocol.

The server (curation_helpers.TeacherServer) stands in for a paid API / a GPU vLLM server,
which cannot run here; its responses are generated from the ground truth (see
``gold_responder``), not recorded from a model.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import pytest
from curation.curation_helpers import TeacherServer, gold_responder
from PIL import Image

from medsft_pipelines.curation.errors import BadInput, CurationError
from medsft_pipelines.curation.images import process_image
from medsft_pipelines.curation.sample import Sample
from medsft_pipelines.curation.teacher import (
    TeacherClient,
    api_key_env,
    resolve_api_key,
    teacher_messages,
)
from medsft_pipelines.specs.curation import TeacherSpec
from medsft_pipelines.storage import open_store

QUESTIONS = {f"Which catalogue entry number {i} is listed first?": "B" for i in range(12)}
WRONG = dict.fromkeys(QUESTIONS, "C")


def _sample(i: int, images: list | None = None) -> Sample:
    q = f"Which catalogue entry number {i} is listed first?"
    return Sample(
        id=f"s/{i}",
        source="s",
        task_type="mcq",
        modality="image" if images else "text",
        question=q,
        answer="B",
        options=["alpha", "beta", "gamma"],
        images=images or [],
    )


def _spec(server: TeacherServer, **kw) -> TeacherSpec:
    return TeacherSpec(
        **{
            "endpoint": server.url,
            "model": "teacher-x",
            "samples_per_question": 4,
            "retry": {"attempts": 4, "backoff_seconds": 0.05},
            **kw,
        }
    )


def _run(client: TeacherClient, samples: list[Sample]) -> list:
    async def go() -> list:
        try:
            return await client.generate_many(samples)
        finally:
            await client.close()

    return asyncio.run(go())


def test_k_samples_images_as_data_urls_and_reasoning_field(tmp_path: Path) -> None:
    big = io.BytesIO()
    Image.new("RGB", (1200, 900), (10, 80, 200)).save(big, format="JPEG")
    image = process_image(big.getvalue(), max_pixels=262144, min_pixels=3136, encoding="png")
    with TeacherServer(gold_responder(QUESTIONS, WRONG)) as server:
        client = TeacherClient(_spec(server), api_key="k", cache=open_store(str(tmp_path)))
        (responses,) = _run(client, [_sample(0, [image])])
        assert server.requests == 1  # n=4 in one request
        assert server.image_sizes == [(image.width, image.height)]
        assert image.width * image.height <= 262144
    assert len(responses) == 4
    assert responses[0].endswith("Answer: B") and responses[1].endswith("Answer: C")
    assert responses[3].startswith("<think>") and "</think>Answer: B" in responses[3]  # folded
    content = teacher_messages(_sample(0, [image]))[0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_server_without_n_support_is_asked_for_the_rest(tmp_path: Path) -> None:
    with TeacherServer(gold_responder(QUESTIONS, WRONG), max_choices=1) as server:
        client = TeacherClient(_spec(server), api_key="k", cache=open_store(str(tmp_path)))
        (responses,) = _run(client, [_sample(1)])
        assert server.requests == 4
    assert [r.split("Step ")[1][0] for r in responses] == ["0", "1", "2", "3"]


def test_restarted_worker_never_pays_twice(tmp_path: Path) -> None:
    samples = [_sample(i) for i in range(6)]
    with TeacherServer(gold_responder(QUESTIONS, WRONG), max_choices=3) as server:
        first = _run(
            TeacherClient(_spec(server), api_key="k", cache=open_store(str(tmp_path))), samples
        )
        paid = server.requests
        assert paid == 12  # 3 + 1 choices per question
        restarted = TeacherClient(_spec(server), api_key="k", cache=open_store(str(tmp_path)))
        second = _run(restarted, samples)
        assert server.requests == paid
        assert restarted.stats.cache_hits == 6 and restarted.stats.requests == 0
        assert restarted.stats.cached_samples == 24
        # A changed request (another temperature) is a different request: it is paid.
        other = TeacherClient(
            _spec(server, temperature=0.9), api_key="k", cache=open_store(str(tmp_path))
        )
        _run(other, samples[:1])
        assert server.requests == paid + 2
    assert first == second


@pytest.mark.parametrize("status", [429, 500])
def test_retries_with_backoff(status: int, tmp_path: Path) -> None:
    with TeacherServer(
        gold_responder(QUESTIONS, WRONG), fail_first=2, fail_status=status
    ) as server:
        client = TeacherClient(_spec(server), api_key="k", cache=None)
        (responses,) = _run(client, [_sample(2)])
        assert server.failures_served == 2 and server.requests == 1
    assert len(responses) == 4


def test_failure_after_retries_is_bad_input_without_content(tmp_path: Path) -> None:
    with TeacherServer(gold_responder(QUESTIONS, WRONG), fail_first=100, fail_status=500) as server:
        client = TeacherClient(
            _spec(server, retry={"attempts": 2, "backoff_seconds": 0}), api_key="k", cache=None
        )
        results = _run(client, [_sample(3), _sample(4)])
    assert all(isinstance(r, BadInput) and r.reason == "teacher_error" for r in results)
    assert "HTTP 500" in results[0].detail and "catalogue" not in results[0].detail
    assert client.stats.failures == 2


def test_concurrency_is_bounded(tmp_path: Path) -> None:
    with TeacherServer(gold_responder(QUESTIONS, WRONG), delay_s=0.2) as server:
        client = TeacherClient(_spec(server, concurrency=3), api_key="k", cache=None)
        results = _run(client, [_sample(i) for i in range(9)])
        assert server.max_inflight == 3
    assert all(len(r) == 4 for r in results)


def test_rate_limit_spaces_requests(tmp_path: Path) -> None:
    with TeacherServer(gold_responder(QUESTIONS, WRONG)) as server:
        client = TeacherClient(_spec(server, requests_per_minute=600), api_key="k", cache=None)
        begin = time.monotonic()
        _run(client, [_sample(i) for i in range(5)])
        arrivals = sorted(server.arrivals)
    # 600/min: the limiter lets the k-th request start no sooner than k * 0.1 s after the
    # first, which started after `begin`. Delays on the way (a busy machine, the first
    # request opening the connection) only make arrivals later, so the bound is judged from
    # `begin`, not between neighbours: one late arrival shortens the gap after it (seen:
    # 0.07 s), which says nothing about the limiter. Without the limiter requests 2 to 4
    # arrive too early (checked). (1 ms: asyncio may run a timer up to its clock's
    # resolution early.)
    assert len(arrivals) == 5
    early = [k for k, at in enumerate(arrivals) if at - begin < k * 0.1 - 0.001]
    assert not early, [round(at - begin, 3) for at in arrivals]


def test_api_key_from_mounted_file_reaches_the_server(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-test-123\n")
    env = {f"{api_key_env('text')}_FILE": str(secret)}
    with TeacherServer(gold_responder(QUESTIONS, WRONG), api_key="sk-test-123") as server:
        spec = _spec(server, api_key_secret={"name": "teacher", "key": "apiKey"})
        key = resolve_api_key("text", spec, env)
        (ok,) = _run(TeacherClient(spec, api_key=key, cache=None), [_sample(5)])
        assert len(ok) == 4
        (denied,) = _run(
            TeacherClient(_spec(server, retry={"attempts": 1}), api_key="wrong", cache=None),
            [_sample(5)],
        )
        assert isinstance(denied, BadInput) and "401" in denied.detail
    with pytest.raises(CurationError, match="MEDSFT_TEACHER_TEXT_API_KEY") as err:
        resolve_api_key("text", spec, {})
    assert "sk-test" not in str(err.value)


def test_teacher_errors_never_carry_the_api_key(caplog: pytest.LogCaptureFixture) -> None:
    """A refusing API that echoes the key presented (as hosted APIs do) must not get it
    into what the worker records or logs (at DEBUG, every library's logger included)."""
    key = "sk-medsft-" + "7f3a9c" * 6
    caplog.set_level(logging.DEBUG)
    with TeacherServer(gold_responder(QUESTIONS, WRONG), api_key="right", echo_key=True) as server:
        client = TeacherClient(
            _spec(server, retry={"attempts": 2, "backoff_seconds": 0}), api_key=key, cache=None
        )
        results = _run(client, [_sample(6), _sample(7)])
    assert all(isinstance(r, BadInput) and r.reason == "teacher_error" for r in results)
    assert "HTTP 401" in results[0].detail
    recorded = [r.detail for r in results if isinstance(r, BadInput)] + [caplog.text]
    assert key[10:] not in "\n".join(recorded)
    assert str(client.stats).count(key) == 0


def test_a_request_past_its_timeout_is_sent_at_most_the_policys_attempts() -> None:
    """A server slower than the timeout: the old client (SDK retries, max_retries=6) sent the
    request up to 7 times, each possibly billed, and counted one. Here the server receives
    exactly ``attempts`` requests and the stats count each attempt and each timeout."""
    with TeacherServer(gold_responder(QUESTIONS, WRONG), delay_s=1.5) as server:
        policy = {"attempts": 3, "timeout_seconds": 0.3, "backoff_seconds": 0}
        client = TeacherClient(_spec(server, retry=policy), api_key="k", cache=None)
        (result,) = _run(client, [_sample(8)])
        assert len(server.arrivals) == 3
        stats = client.stats
        assert (stats.attempts, stats.retries, stats.timeouts) == (3, 2, 3)
        assert (stats.requests, stats.failures) == (0, 1)
        assert isinstance(result, BadInput) and "Timeout" in result.detail
        # retryOnTimeout: false sends a timed-out request once (it may have been billed).
        once = {**policy, "retry_on_timeout": False}
        client = TeacherClient(_spec(server, retry=once), api_key="k", cache=None)
        _run(client, [_sample(9)])
        assert len(server.arrivals) == 4
        assert (client.stats.attempts, client.stats.timeouts) == (1, 1)


def test_retries_honour_retry_after_and_count_every_attempt_and_token() -> None:
    with TeacherServer(gold_responder(QUESTIONS, WRONG), fail_first=2, fail_status=503) as server:
        client = TeacherClient(_spec(server), api_key="k", cache=None)
        (responses,) = _run(client, [_sample(10)])
        assert len(server.arrivals) == 3 and server.requests == 1
    assert len(responses) == 4
    stats = client.stats
    assert (stats.attempts, stats.retries, stats.requests, stats.failures) == (3, 2, 1, 0)
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0


def test_the_cache_is_keyed_by_what_determines_a_response(tmp_path: Path) -> None:
    """Hits across everything that does not change a request (API key, retry policy,
    concurrency, rate limit); samples by index, so asking for more samples pays only for the
    new ones and asking for fewer pays nothing; another endpoint is another request."""
    cache = open_store(str(tmp_path))
    samples = [_sample(i) for i in range(3)]
    with TeacherServer(gold_responder(QUESTIONS, WRONG)) as server:
        first = _run(TeacherClient(_spec(server), api_key="a", cache=cache), samples)
        assert server.requests == 3
        other = _spec(server, retry={"attempts": 1}, concurrency=1, requests_per_minute=6000)
        same = TeacherClient(other, api_key="b", cache=cache)
        assert _run(same, samples) == first and server.requests == 3
        assert (same.stats.cache_hits, same.stats.cache_misses) == (3, 0)
        more = TeacherClient(_spec(server, samples_per_question=6), api_key="a", cache=cache)
        six = _run(more, samples)
        assert server.requests == 6 and server.samples_served == 3 * 4 + 3 * 2
        assert [s[:4] for s in six] == first  # samples 0..3 kept, 4..5 new
        fewer = TeacherClient(_spec(server, samples_per_question=2), api_key="a", cache=cache)
        assert _run(fewer, samples) == [s[:2] for s in first] and server.requests == 6
        with TeacherServer(gold_responder(QUESTIONS, WRONG)) as elsewhere:
            moved = TeacherClient(_spec(elsewhere), api_key="a", cache=cache)
            _run(moved, samples[:1])
            assert elsewhere.requests == 1


def test_the_same_request_in_flight_twice_is_paid_once(tmp_path: Path) -> None:
    """Two rows with the same text (dedup off) in one batch: the second waits for the first
    request instead of sending its own (the old cache was only read before sending, so both
    were paid)."""
    twin = Sample(**{**_sample(11).__dict__, "id": "s/twin"})
    with TeacherServer(gold_responder(QUESTIONS, WRONG), delay_s=0.2) as server:
        client = TeacherClient(_spec(server), api_key="k", cache=open_store(str(tmp_path)))
        first, second = _run(client, [_sample(11), twin])
        assert len(server.arrivals) == 1
    assert first == second and len(first) == 4
    assert (client.stats.cache_misses, client.stats.cache_hits) == (1, 1)
