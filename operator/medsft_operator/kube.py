"""Asynchronous access to the Kubernetes API for the reconcilers.

The official ``kubernetes`` client does authentication (kubeconfig, in-cluster token)
and TLS; its blocking calls run on a bounded thread pool so the operator's event loop
never waits on the network. Objects go in and come out as plain dicts (no model
(de)serialisation: cheaper, and the same shape kopf hands to the handlers). Every
request is counted in the ``medsft_api_requests_total`` metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from medsft_operator import metrics
from medsft_operator.api.k8s import GROUP, VERSION

Body = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """A namespaced API resource: where its objects live in the REST API."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


CURATIONJOBS = ResourceType(GROUP, VERSION, "curationjobs", "CurationJob")
SFTJOBS = ResourceType(GROUP, VERSION, "sftjobs", "SFTJob")
EVALJOBS = ResourceType(GROUP, VERSION, "evaljobs", "EvalJob")
MEDSFTRUNS = ResourceType(GROUP, VERSION, "medsftruns", "MedSFTRun")
JOBS = ResourceType("batch", "v1", "jobs", "Job")
PYTORCHJOBS = ResourceType("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
TRAINJOBS = ResourceType("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
# Read only: Kueue's record of a queued Job / PyTorchJob / TrainJob (admission, eviction).
WORKLOADS = ResourceType("kueue.x-k8s.io", "v1beta2", "workloads", "Workload")
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap")
SECRETS = ResourceType("", "v1", "secrets", "Secret")
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
# Read only: a failed training attempt's pods, awaited before the next attempt starts, and
# the pods of an unfinished child, for why they do not start (medsft_operator.diagnose).
PODS = ResourceType("", "v1", "pods", "Pod")
# Created (our transitions); read: a child's Events, for pods its controller could not create.
EVENTS = ResourceType("", "v1", "events", "Event")

BY_KIND = {
    rt.kind: rt
    for rt in (
        *(CURATIONJOBS, SFTJOBS, EVALJOBS, MEDSFTRUNS),
        *(JOBS, PYTORCHJOBS, TRAINJOBS, CONFIGMAPS, SECRETS),
    )
}

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)


class KubeError(Exception):
    """An API error, with the HTTP status and the apiserver's message (no response body,
    which could echo object contents)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def from_api_exception(cls, exc: ApiException) -> KubeError:
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(exc.body or "{}").get("message", "")
        return cls(int(exc.status or 0), str(exc.reason or ""), message)


class OutOfTime(Exception):
    """Not sent: the client's time budget is spent (for the operator's client: its leader
    term ended — it must not act any more)."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: the object exists already, or the resourceVersion precondition failed."""


class NoClusterConfig(config.ConfigException):
    """No usable way to reach a cluster; the message says which source failed and why."""


def load_api_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    *,
    context: str | None = None,
    pool_size: int = 16,
    retries: int | None = 0,
) -> client.ApiClient:
    """The one way medsft reaches a cluster: the ``medsft`` CLI and the operator both call it.

    The order is kubectl's (client-go's default loading rules, then in-cluster):

    1. ``kubeconfig`` (the ``--kubeconfig`` flag), else ``$KUBECONFIG``, and ``context``:
       when either is given, that file and context or :class:`NoClusterConfig` — an explicit
       choice that fails never falls back to some other cluster;
    2. the default kubeconfig, ``~/.kube/config``, when it exists;
    3. the pod's ServiceAccount (in-cluster), when there is no kubeconfig at all.

    ``pool_size``: connections kept per host. ``retries``: urllib3's retries inside one
    request; the operator passes 0 (a request takes at most its timeout, which the leader's
    term bounds; callers retry on their own terms), ``None`` keeps the client's default.
    """
    configuration = client.Configuration()
    explicit = os.fspath(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or None
    try:
        # config_file=None: the client's default location (~/.kube/config).
        config.load_kube_config(
            config_file=explicit, context=context, client_configuration=configuration
        )
    except (config.ConfigException, OSError) as exc:
        if explicit or context:
            raise NoClusterConfig(
                f"cannot use kubeconfig {explicit or ''} {context or ''}: {exc}"
            ) from None
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            raise NoClusterConfig(
                "no cluster configured: pass --kubeconfig, set KUBECONFIG or create ~/.kube/config"
            ) from None
    configuration.connection_pool_maxsize = pool_size
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)


class Kube:
    """Get, list, create, patch and delete namespaced objects as dicts.

    ``budget``: seconds this client may still spend (the leader's remaining term); each
    request is refused with :class:`OutOfTime` once it is spent — checked when the request
    is made and again just before it is sent — and times out within it.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        executor: ThreadPoolExecutor,
        *,
        budget: Callable[[], float] | None = None,
    ) -> None:
        self.api = api_client
        self.executor = executor
        self.budget = budget

    def timeout(self) -> tuple[float, float]:
        """(connect, read) timeout of a request sent now; :class:`OutOfTime` if none may be."""
        if self.budget is None:
            return REQUEST_TIMEOUT
        left = self.budget()
        if left <= 0:
            raise OutOfTime("the time budget of this client is spent")
        return (min(REQUEST_TIMEOUT[0], left), min(REQUEST_TIMEOUT[1], left))

    async def _request(
        self,
        verb: str,
        method: str,
        rt: ResourceType,
        path: str,
        *,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Body:
        url = path + (f"?{urlencode(query)}" if query else "")
        self.timeout()  # refused before it even queues for a thread
        metrics.API_REQUESTS.labels(
            verb=verb, resource=rt.plural, trigger=metrics.TRIGGER.get()
        ).inc()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self._call, method, url, body, content_type
        )

    def _call(self, method: str, url: str, body: Any, content_type: str) -> Body:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self.api.param_serialize(
            method, url, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        # Never wait forever on a dead apiserver, nor past the budget: (connect, read) seconds.
        response = self.api.call_api(*request, _request_timeout=self.timeout())
        response.read()
        if not 200 <= response.status <= 299:
            error = KubeError.from_api_exception(ApiException(http_resp=response))
            error_type = {404: NotFound, 409: Conflict}.get(error.status, KubeError)
            raise error_type(error.status, error.reason, error.message)
        return json.loads(response.data) if response.data else {}

    async def served(self, rt: ResourceType) -> bool:
        """Whether the apiserver serves ``rt`` (its group/version lists the resource)."""
        base = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
        try:
            found = await self._request("discover", "GET", rt, base)
        except NotFound:
            return False
        return any(r.get("name") == rt.plural for r in found.get("resources") or [])

    async def get(self, rt: ResourceType, namespace: str, name: str) -> Body | None:
        """The object, or None if it does not exist."""
        try:
            return await self._request("get", "GET", rt, rt.path(namespace, name))
        except NotFound:
            return None

    async def list(
        self,
        rt: ResourceType,
        namespace: str,
        labels: dict[str, str],
        *,
        fields: dict[str, str] | None = None,
    ) -> list[Body]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())}
        if fields:
            query["fieldSelector"] = ",".join(f"{k}={v}" for k, v in fields.items())
        result = await self._request("list", "GET", rt, rt.path(namespace), query=query)
        return list(result.get("items") or [])

    async def create(self, rt: ResourceType, body: Body) -> Body:
        namespace = body["metadata"]["namespace"]
        return await self._request("create", "POST", rt, rt.path(namespace), body=body)

    async def ensure(
        self, rt: ResourceType, body: Body, *, create_first: bool = False
    ) -> tuple[Body, bool]:
        """The object named like ``body``, created from it if absent: (object, created).

        Reads first unless ``create_first``: in the steady state a child exists, and a read
        is one request where a failed create would be two.
        """
        meta = body["metadata"]
        if not create_first:
            existing = await self.get(rt, meta["namespace"], meta["name"])
            if existing is not None:
                return existing, False
        try:
            return await self.create(rt, body), True
        except Conflict:  # created meanwhile (another reconcile, or a replica's last act)
            existing = await self.get(rt, meta["namespace"], meta["name"])
            if existing is None:
                raise
            return existing, False

    async def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patch: Body,
        *,
        subresource: str | None = None,
    ) -> Body:
        """JSON merge patch; a ``metadata.resourceVersion`` in ``patch`` is a precondition."""
        return await self._request(
            "patch",
            "PATCH",
            rt,
            rt.path(namespace, name, subresource),
            body=patch,
            content_type=MERGE_PATCH,
        )

    async def patch_status(self, rt: ResourceType, namespace: str, name: str, patch: Body) -> Body:
        return await self.patch(rt, namespace, name, patch, subresource="status")

    async def delete(
        self, rt: ResourceType, namespace: str, name: str, *, propagation: str = "Background"
    ) -> bool:
        """Delete; its children go by garbage collection — after it (``Background``), or
        before it (``Foreground``: it stays, marked for deletion, until every child whose
        ownerReference blocks it is gone, recursively down to the pods)."""
        try:
            await self._request(
                "delete",
                "DELETE",
                rt,
                rt.path(namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": propagation,
                },
            )
            return True
        except NotFound:
            return False

    async def update(self, rt: ResourceType, body: Body) -> Body:
        meta = body["metadata"]
        return await self._request(
            "update", "PUT", rt, rt.path(meta["namespace"], meta["name"]), body=body
        )
