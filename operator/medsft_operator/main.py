"""Run the operator: :func:`run_operator`, behind ``medsft operator`` and
``python -m medsft_operator`` (one command, :mod:`medsft_operator.cli.operator`).

Settings come from ``MEDSFT_*`` environment variables (the Helm chart) and flags. The
process serves health and metrics at once, waits for the leader Lease, then runs kopf
until told to stop (SIGTERM) or until it loses the Lease (then it exits non-zero and
its Deployment restarts it as a candidate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import aiohttp
import kopf
from kubernetes import client

from medsft_operator import compat
from medsft_operator.artifacts import StorageAccess
from medsft_operator.config import OperatorConfig
from medsft_operator.controller import Controller
from medsft_operator.handlers import configure, register
from medsft_operator.health import HealthServer
from medsft_operator.kube import Kube, OutOfTime, load_api_client
from medsft_operator.leader import LeaderElector
from medsft_operator.poller import Poller
from medsft_operator.reconcilers.base import Context, EventSink

log = logging.getLogger("medsft.operator")


class Redactor(logging.Filter):
    """Scrubs every secret value the operator has seen from log records."""

    def __init__(self, redact: Any) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def setup_logging(config: OperatorConfig, redact: Any) -> None:
    fmt = kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=config.log_level == "DEBUG", log_format=fmt)
    root = logging.getLogger()
    root.setLevel(config.log_level)
    for handler in root.handlers:
        handler.addFilter(Redactor(redact))
    quiet = ["urllib3", "kubernetes", "aiohttp.access"]
    if config.log_level != "DEBUG":
        quiet.append("kopf.objects")  # "Handler ... succeeded" for every event and timer tick
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's connection, with exactly the credentials of the reconcilers' client."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class FencedSession:
    """kopf's HTTP session, fenced like the reconcilers' client (see :class:`Kube`): a write
    (any method but GET) is refused once the leader's term is spent, and times out within
    what is left of it. kopf writes its bookkeeping annotations, finalizers and Events
    through here; reads and watches pass unchanged."""

    def __init__(self, session: aiohttp.ClientSession, remaining: Callable[[], float]) -> None:
        self._session = session
        self._remaining = remaining

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def request(self, method: str, url: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        if method.upper() not in ("GET", "HEAD"):
            left = self._remaining()
            if left <= 0:
                raise OutOfTime(f"not leading: {method} {url} refused")
            timeout: aiohttp.ClientTimeout | None = kwargs.get("timeout")
            total = min(left, timeout.total) if timeout is not None and timeout.total else left
            kwargs["timeout"] = aiohttp.ClientTimeout(total=total)
        return await self._session.request(method, url, **kwargs)


def login_handler(
    configuration: client.Configuration, remaining: Callable[[], float] | None = None
) -> Any:
    """A kopf login handler: the reconcilers' credentials; with leader election, a session
    whose writes stop with the leader's term (``remaining``)."""

    async def login(**_: Any) -> kopf.ConnectionInfo | kopf.AiohttpSession:
        info = connection_info(configuration)
        if remaining is None:
            return info
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
        )
        fenced = cast(aiohttp.ClientSession, FencedSession(session, remaining))
        return kopf.AiohttpSession(server=info.server, aiohttp_session=fenced)

    return login


def handle_signals(stop: asyncio.Event) -> None:
    """SIGTERM / SIGINT set ``stop`` (outside the main thread, signals are not ours)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run(config: OperatorConfig, *, stop: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set or a signal arrives (0), or the Lease is lost (1)."""
    stop = stop or asyncio.Event()
    handle_signals(stop)

    api_client = load_api_client(config.kubeconfig, pool_size=config.api_threads)
    executor = ThreadPoolExecutor(config.api_threads, thread_name_prefix="medsft-io")
    elector = None
    if config.leader_election:
        # Its own client and threads: a renewal never waits behind the reconciles' requests.
        lease_kube = Kube(
            load_api_client(config.kubeconfig, pool_size=2),
            ThreadPoolExecutor(2, thread_name_prefix="medsft-lease"),
        )
        elector = LeaderElector(
            lease_kube,
            namespace=config.lease_namespace,
            name=config.lease_name,
            identity=config.identity,
            duration_s=config.lease_duration_s,
            renew_deadline_s=config.renew_deadline_s,
            retry_s=config.lease_renew_s,
        )
        lease_kube.budget = elector.round_budget
    # Every request of the reconcilers (and kopf's writes, see FencedSession) is bounded by
    # what is left of the leader's term, and refused after it.
    kube = Kube(api_client, executor, budget=elector.remaining if elector else None)
    storage = StorageAccess(kube, executor)
    setup_logging(config, storage.redact)
    controller = Controller(Context(kube, storage, config, EventSink(storage.redact, kube)))

    ports = [config.http_port] + ([config.metrics_port] if config.metrics_port is not None else [])
    health = HealthServer(
        config.http_host,
        ports,
        lambda: {
            "leader": elector.remaining() > 0 if elector else True,
            "identity": config.identity,
        },
    )
    bound = await health.start()
    log.info("health and metrics on ports %s; identity %s", bound, config.identity)
    try:
        if elector is not None:
            acquiring = asyncio.create_task(elector.acquire())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                acquiring.cancel()
                return 0
            stopping.cancel()
        return await _operate(config, controller, api_client, elector, stop)
    finally:
        if elector is not None:
            await hand_over(elector, executor)
        await health.stop()
        executor.shutdown(wait=False, cancel_futures=True)


async def drain(executor: ThreadPoolExecutor, seconds: float) -> bool:
    """Whether every request running on ``executor`` ended within ``seconds`` (queued ones
    are dropped): a handler cancelled at shutdown leaves its request running in a thread."""
    finishing = asyncio.ensure_future(
        asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
    )
    done, _ = await asyncio.wait({finishing}, timeout=max(0.0, seconds))
    return bool(done)


async def hand_over(elector: LeaderElector, executor: ThreadPoolExecutor) -> None:
    """Release the Lease on a clean exit only after the reconcilers' requests (API and
    storage, all on ``executor``) ended: a successor must not act beside a write of ours
    still on its way. Each of them times out within the term, so this waits no longer."""
    await elector.release(drain=lambda seconds: drain(executor, seconds))


async def _operate(
    config: OperatorConfig,
    controller: Controller,
    api_client: client.ApiClient,
    elector: LeaderElector | None,
    stop: asyncio.Event,
) -> int:
    registry = kopf.OperatorRegistry()
    settings = kopf.OperatorSettings()
    configure(settings, max_workers=config.max_concurrent_reconciles)
    poller = Poller(controller, config.poll_interval_s)
    remaining = elector.remaining if elector is not None else None
    if elector is not None:  # kopf's own writes, too, at most as long as a renewal may take
        settings.networking.request_timeout = min(
            settings.networking.request_timeout or config.renew_deadline_s, config.renew_deadline_s
        )
    upstreams = await compat.served(controller.ctx.kube)
    for upstream, ok in upstreams.items():
        if not ok:
            log.warning("%s", upstream.missing())
    register(
        registry,
        controller,
        poller=poller,
        login=login_handler(api_client.configuration, remaining),
        train_jobs=upstreams[compat.TRAINER],
    )
    stop_flag: asyncio.Event = asyncio.Event()
    ready_flag: asyncio.Event = asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    )
    # kopf installs its own signal handlers at start; take them back once it is up, so that
    # a signal stops kopf through its stop flag (its exit then waits for nothing of ours).
    ready = asyncio.create_task(ready_flag.wait())
    await asyncio.wait({operator, ready}, return_when=asyncio.FIRST_COMPLETED)
    if operator.done():  # kopf could not start
        ready.cancel()
        operator.result()
        return 1
    handle_signals(stop)
    polling = asyncio.create_task(poller.run())
    watchers = {operator, polling, asyncio.create_task(stop.wait())}
    keeping = asyncio.create_task(elector.keep()) if elector else None
    if keeping is not None:
        watchers.add(keeping)
    await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    lost = keeping is not None and keeping.done()
    if polling.done() and not polling.cancelled() and polling.exception():
        log.error("the poller stopped: %r", polling.exception())
        lost = True
    # Our own tasks go first: kopf waits a while for any task still pending at its exit.
    for task in watchers - {operator}:
        task.cancel()
    await asyncio.gather(*(watchers - {operator}), return_exceptions=True)
    stop_flag.set()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(operator, timeout=30)
    return 1 if lost else 0  # lost the Lease (or the poller): exit, to be restarted


def run_operator(
    config: OperatorConfig | None = None,
    *,
    namespaces: list[str] | None = None,
    kubeconfig: str | None = None,
    http_port: int | None = None,
    metrics_port: int | None = None,
    poll_interval_s: float | None = None,
    lease_namespace: str | None = None,
    identity: str | None = None,
    log_level: str | None = None,
    log_format: str | None = None,
    standalone: bool | None = None,
) -> int:
    """Blocking entry point of ``medsft operator`` and ``python -m medsft_operator``.

    Keyword arguments override ``config`` (default: from the environment) where given:
    ``standalone`` turns leader election off (one replica only); ``log_format`` is
    ``json`` or ``plain`` (``text`` is read as ``plain``).
    """
    config = config or OperatorConfig.from_env()
    given = {
        "namespaces": None if namespaces is None else list(namespaces),
        "kubeconfig": kubeconfig,
        "http_port": http_port,
        "metrics_port": metrics_port,
        "poll_interval_s": poll_interval_s,
        "lease_namespace": lease_namespace,
        "identity": identity,
        "log_level": None if log_level is None else log_level.upper(),
        "log_format": "plain" if log_format == "text" else log_format,
        "leader_election": None if standalone is None else not standalone,
    }
    overrides = {key: value for key, value in given.items() if value is not None}
    if overrides:
        config = OperatorConfig.model_validate({**config.model_dump(), **overrides})
    return asyncio.run(run(config))
