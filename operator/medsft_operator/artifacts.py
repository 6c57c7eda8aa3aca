"""What the operator reads from (and writes to) object storage, with the run's own credentials.

Credentials come from the Secret a spec references (the same one its pods use), so a
run's storage is reached with exactly the rights its jobs have. They live only in this
process's memory (a short-lived cache) and are scrubbed from every error text.
Storage calls block, so they run on the operator's thread pool.

Fencing: the stores carry the operator client's budget (the leader's remaining term), so
every request — not just each call — is refused after the term and times out within it; and
the one object the operator overwrites, the promoted pointer, is only ever moved forward by
a conditional write (:meth:`StorageAccess.advance_json`), so a write delayed in the network
past its leader's term cannot replace what a successor wrote.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.alias_generators import to_camel

from medsft_operator import metrics
from medsft_operator.kube import SECRETS, Kube
from medsft_operator.reconcilers.errors import InputsError
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.storage import (
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StorageSettings,
    open_store,
)
from medsft_pipelines.storage.progress import read_progress

T = TypeVar("T")

SECRET_TTL_S = 30.0


class ManifestView(BaseModel):
    """What the operator reads from a dataset ``manifest.json`` (``storage.shards.Manifest``
    without importing it: that module loads pyarrow, ~60 MB the operator does not need)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, alias_generator=to_camel)

    num_rows: int = Field(ge=0)
    shards: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}


class StorageAccess:
    """Per-namespace storage clients built from referenced Secrets."""

    def __init__(self, kube: Kube, executor: ThreadPoolExecutor) -> None:
        self.kube = kube
        self.executor = executor
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._stores: dict[tuple[str, ...], ObjectStore] = {}
        self._known_secret_values: set[str] = set()
        self._ca_dir = Path(tempfile.mkdtemp(prefix="medsft-ca-"))

    # -- secrets -------------------------------------------------------------------------

    async def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """Decoded data of a Secret (cached briefly); InputsError when it does not exist."""
        key = (namespace, name)
        cached = self._secrets.get(key)
        if cached and time.monotonic() - cached[0] < SECRET_TTL_S:
            return cached[1]
        body = await self.kube.get(SECRETS, namespace, name)
        if body is None:
            self._secrets.pop(key, None)
            raise InputsError(
                "SecretNotFound", f"Secret {name!r} does not exist in namespace {namespace!r}"
            )
        data = {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
        data.update(body.get("stringData") or {})
        self._known_secret_values.update(v for v in data.values() if len(v) >= 4)
        self._secrets[key] = (time.monotonic(), data)
        return data

    async def secret_key(self, namespace: str, name: str, key: str) -> str:
        data = await self.secret_data(namespace, name)
        if key not in data:
            raise InputsError(
                "SecretKeyNotFound", f"Secret {name!r} has no key {key!r} (namespace {namespace!r})"
            )
        return data[key]

    def redact(self, text: str) -> str:
        """``text`` with every secret value this process has seen replaced."""
        for value in self._known_secret_values:
            text = text.replace(value, "***")
        return text

    # -- stores --------------------------------------------------------------------------

    async def settings(self, namespace: str, storage: StorageSpec) -> StorageSettings:
        """Connection settings of ``storage`` with credentials from its Secret."""
        access = secret = None
        creds = storage.credentials_secret
        if creds is not None:
            access = await self.secret_key(namespace, creds.name, creds.access_key_key)
            secret = await self.secret_key(namespace, creds.name, creds.secret_key_key)
        ca_file = storage.ca_file
        if storage.ca_secret is not None:
            pem = await self.secret_key(namespace, storage.ca_secret.name, storage.ca_secret.key)
            ca_file = str(self._ca_path(pem))
        return StorageSettings(
            endpoint=storage.endpoint,
            secure=storage.secure,
            ca_file=ca_file,
            access_key=SecretStr(access) if access else None,
            secret_key=SecretStr(secret) if secret else None,
            region=storage.region or "us-east-1",
            # The operator only reads small objects: fail fast and try again on the next tick.
            retry_timeout_s=5.0,
            connect_timeout_s=3.0,
            read_timeout_s=10.0,
        )

    def _ca_path(self, pem: str) -> Path:
        path = self._ca_dir / f"{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
        if not path.exists():
            path.write_text(pem)
        return path

    async def store(self, namespace: str, storage: StorageSpec, uri: str) -> ObjectStore:
        """The store rooted at ``uri`` (``s3://bucket/prefix``)."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3":
            raise InputsError("UnsupportedURI", f"{uri} is not an s3:// URI the operator can read")
        settings = await self.settings(namespace, storage)
        access, secret = settings.secrets()
        key = (
            parsed.netloc,
            settings.endpoint or "",
            str(settings.secure),
            settings.ca_file or "",
            hashlib.sha256(f"{access}\0{secret}".encode()).hexdigest(),
        )
        bucket = self._stores.get(key)
        if bucket is None:
            # The budget is read before every request (each retry, part, page, batch).
            bucket = open_store(f"s3://{parsed.netloc}", settings, budget=self.kube.budget)
            self._stores[key] = bucket
        path = parsed.path.strip("/")
        return bucket.child(path) if path else bucket

    async def call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()

        def within_budget() -> T:
            self.kube.timeout()  # OutOfTime once the leader's term is spent (see Kube)
            return fn()

        try:
            result = await loop.run_in_executor(self.executor, within_budget)
        except ObjectNotFound:
            metrics.STORAGE_READS.labels(result="not_found").inc()
            raise
        except Exception:
            metrics.STORAGE_READS.labels(result="error").inc()
            raise
        metrics.STORAGE_READS.labels(result="ok").inc()
        return result

    # -- what the reconcilers read and write ---------------------------------------------

    async def progress(
        self, namespace: str, storage: StorageSpec, root: str
    ) -> dict[str, Any] | None:
        store = await self.store(namespace, storage, root)
        return await self.call(lambda: read_progress(store))

    async def manifest(
        self, namespace: str, storage: StorageSpec, manifest_uri: str
    ) -> ManifestView | None:
        """The dataset manifest at ``manifest_uri`` (``.../manifest.json``); None while it
        does not exist (a dataset exists once its manifest does)."""
        data = await self.get_json(namespace, storage, manifest_uri)
        if data is None:
            return None
        try:
            return ManifestView.model_validate(data)
        except ValidationError as exc:
            raise InputsError(
                "InvalidManifest", f"{manifest_uri} is not a dataset manifest: {exc}"
            ) from None

    async def get_json(self, namespace: str, storage: StorageSpec, uri: str) -> Any | None:
        root, key = uri.rstrip("/").rsplit("/", 1)
        store = await self.store(namespace, storage, root)
        try:
            return await self.call(lambda: store.get_json(key))
        except ObjectNotFound:
            return None

    async def exists(self, namespace: str, storage: StorageSpec, uri: str) -> bool:
        root, key = uri.rstrip("/").rsplit("/", 1)
        store = await self.store(namespace, storage, root)
        return await self.call(lambda: store.exists(key))

    async def advance_json(
        self, namespace: str, storage: StorageSpec, uri: str, value: dict[str, Any], order: str
    ) -> dict[str, Any]:
        """Write ``value`` at ``uri`` unless the object there is as far or further along by
        ``value[order]`` (e.g. the generation); what the object holds afterwards.

        Forward only, decided by the store: the write is conditional on the version read, so
        if anyone wrote in between — or this request reaches the store late, after a
        successor wrote — it is refused and the comparison is made again with what is there.
        """
        root, key = uri.rstrip("/").rsplit("/", 1)
        store = await self.store(namespace, storage, root)

        def advance() -> dict[str, Any]:
            while True:
                try:
                    current, tag = store.get_json_tagged(key)
                except ObjectNotFound:
                    current, tag = None, None
                if isinstance(current, dict) and int(current.get(order) or 0) >= value[order]:
                    return current
                try:
                    store.put_json_if(key, value, tag)
                except PreconditionFailed:
                    continue  # written meanwhile: compare with that
                return value

        return await self.call(advance)

    async def delete_prefix(self, namespace: str, storage: StorageSpec, uri: str) -> int:
        """Delete everything under the folder ``uri``; how many objects went."""
        store = await self.store(namespace, storage, uri)
        return await self.call(lambda: store.delete_prefix(""))

    async def latest_checkpoint(
        self, namespace: str, storage: StorageSpec, sft_output: str, nodes: int
    ) -> str | None:
        """URI of the newest step every node completed, or None."""
        from medsft_operator import layout
        from medsft_pipelines.storage.checkpoints import (
            CheckpointStore,
            newest_common_step,
            step_prefix,
        )

        stores = [
            CheckpointStore(
                await self.store(namespace, storage, layout.checkpoints_uri(sft_output, node))
            )
            for node in range(nodes)
        ]
        step = await self.call(lambda: newest_common_step(stores))
        if step is None:
            return None
        return f"{layout.checkpoints_uri(sft_output, 0)}/{step_prefix(step).rstrip('/')}"
