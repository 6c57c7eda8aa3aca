"""The one way medsft reaches a cluster (``kube.load_api_client``, used by the CLI and the
operator): kubectl's order — the explicit kubeconfig or $KUBECONFIG, then ~/.kube/config, then
the pod's ServiceAccount. The ServiceAccount files are written to a temporary folder (no pod
here); nothing is sent: only the client's configuration is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medsft_operator.kube import NoClusterConfig, load_api_client


def _kubeconfig(path: Path, server: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """No $KUBECONFIG, a default kubeconfig location under tmp_path (absent until written)."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    default = tmp_path / "home" / ".kube" / "config"
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(default))
    return default


@pytest.fixture
def in_cluster(tmp_path, monkeypatch) -> str:
    """A ServiceAccount as a pod sees it: the service env variables and token + CA files."""
    secrets = tmp_path / "serviceaccount"
    secrets.mkdir()
    (secrets / "token").write_text("sa-token")
    (secrets / "ca.crt").write_text("not checked before a request is made")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(
        "kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME", str(secrets / "token")
    )
    monkeypatch.setattr(
        "kubernetes.config.incluster_config.SERVICE_CERT_FILENAME", str(secrets / "ca.crt")
    )
    return "https://10.96.0.1:443"


def test_the_default_kubeconfig_comes_before_the_service_account(home, in_cluster):
    _kubeconfig(home, "https://kubeconfig.example:6443")
    assert load_api_client().configuration.host == "https://kubeconfig.example:6443"


def test_the_service_account_when_there_is_no_kubeconfig(home, in_cluster):
    assert load_api_client().configuration.host == in_cluster


def test_kubeconfig_env_comes_before_the_default_kubeconfig(home, tmp_path, monkeypatch):
    _kubeconfig(home, "https://default.example:6443")
    named = _kubeconfig(tmp_path / "named", "https://named.example:6443")
    monkeypatch.setenv("KUBECONFIG", str(named))
    assert load_api_client().configuration.host == "https://named.example:6443"


def test_an_explicit_kubeconfig_wins_and_never_falls_back(home, in_cluster, tmp_path):
    _kubeconfig(home, "https://default.example:6443")
    given = _kubeconfig(tmp_path / "given", "https://given.example:6443")
    assert load_api_client(given).configuration.host == "https://given.example:6443"
    with pytest.raises(NoClusterConfig, match="cannot use kubeconfig"):
        load_api_client(tmp_path / "absent")
    with pytest.raises(NoClusterConfig, match="cannot use kubeconfig"):
        load_api_client(context="no-such-context")


def test_nothing_configured_says_how_to_configure_it(home):
    with pytest.raises(NoClusterConfig, match="no cluster configured"):
        load_api_client()


def test_the_operator_turns_off_retries_inside_a_request(home):
    _kubeconfig(home, "https://kubeconfig.example:6443")
    assert load_api_client(pool_size=3).configuration.retries == 0
    assert load_api_client(pool_size=3).configuration.connection_pool_maxsize == 3
    assert load_api_client(retries=None).configuration.retries is None
