"""Reading medsft resources and Secrets from the cluster for ``status``, ``report`` and
``validate --server``; the client comes from :func:`medsft_operator.kube.load_api_client`,
the one loader the operator uses too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft_operator.api.k8s import GROUP, VERSION
from medsft_operator.cli.common import PLURAL_BY_KIND, fail

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def kube_client(kubeconfig: Path | None, context: str | None) -> ApiClient:
    """A client in kubectl's order (see :func:`medsft_operator.kube.load_api_client`), or one
    clear line saying why there is none."""
    from medsft_operator.kube import NoClusterConfig, load_api_client

    try:
        # retries=None: the client's own retries of a failed connection (the operator
        # turns them off; a person at a terminal is better served by them).
        return load_api_client(kubeconfig, context=context, retries=None)
    except NoClusterConfig as exc:
        raise fail(str(exc)) from None


def default_namespace(kubeconfig: Path | None, context: str | None) -> str:
    """The namespace of the kubeconfig's current context, else ``default``."""
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (config.ConfigException, FileNotFoundError, TypeError):
        return "default"
    if context:
        contexts, _ = config.list_kube_config_contexts(
            config_file=str(kubeconfig) if kubeconfig else None
        )
        active = next((c for c in contexts if c["name"] == context), active)
    return str((active or {}).get("context", {}).get("namespace") or "default")


def list_resources(
    api: ApiClient, kinds: Iterable[str], namespace: str | None
) -> list[dict[str, Any]]:
    """Every object of ``kinds`` in ``namespace`` (``None``: all namespaces)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    objects: list[dict[str, Any]] = []
    for kind in kinds:
        plural = PLURAL_BY_KIND[kind]
        if namespace is None:
            listing = custom.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        assert isinstance(listing, dict)
        objects += [{**item, "kind": kind} for item in listing.get("items", [])]
    return objects


def get_resource(api: ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL_BY_KIND[kind], name
    )
    assert isinstance(obj, dict)
    return {**obj, "kind": kind}


def secret_credentials(api: ApiClient, namespace: str, ref: dict[str, Any]) -> tuple[str, str]:
    """The access and secret key of a StorageSpec ``credentialsSecret`` (never printed)."""
    import base64

    from kubernetes import client

    secret = client.CoreV1Api(api).read_namespaced_secret(ref["name"], namespace)
    data = secret.data or {}

    def value(key: str) -> str:
        if key not in data:
            raise KeyError(f"Secret {ref['name']} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    return value(ref.get("accessKeyKey", "accessKey")), value(ref.get("secretKeyKey", "secretKey"))


@contextmanager
def cluster_errors(what: str, api: ApiClient) -> Iterator[None]:
    """Turn API and connection failures into one clear line (no traceback, no secrets)."""
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise fail(f"{what}: {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        host = api.configuration.host
        raise fail(f"{what}: cannot reach the cluster at {host} ({type(exc).__name__})") from None
