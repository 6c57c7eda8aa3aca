"""The upstream releases medsft supports are pinned here, against what the harness runs:
the controller versions built by hack/build-testbin.sh (hack/testbin.env), the CRDs those
releases ship, and what a real apiserver serves once they are installed. A release that
stops serving an API version the operator uses fails here, saying which and what for."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from harness.batch_controllers import crd_files, install_crds
from harness.testbin import pinned_versions
from medsft_operator import compat
from medsft_operator.kube import Kube

REPO = Path(__file__).resolve().parents[2]
COMPONENT = {compat.KUEUE: "kueue", compat.TRAINER: "trainer"}


def test_the_harness_runs_the_releases_the_operator_declares():
    pinned = pinned_versions()
    assert pinned["KUEUE_VERSION"] == compat.KUEUE.tested
    assert pinned["TRAINER_VERSION"] == compat.TRAINER.tested
    assert pinned["JOBSET_VERSION"] == compat.JOBSET_TESTED
    install = (REPO / "docs" / "install.md").read_text()
    for version in (compat.KUEUE.tested, compat.TRAINER.tested, compat.JOBSET_TESTED):
        assert version in install, f"docs/install.md does not name {version}"


@pytest.mark.parametrize("upstream", [compat.KUEUE, compat.TRAINER], ids=lambda u: u.name)
def test_the_pinned_releases_crds_serve_the_api_versions_the_operator_uses(upstream):
    rt = upstream.rt
    crds = [
        doc
        for path in crd_files(COMPONENT[upstream])
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    crd = next((c for c in crds if c["metadata"]["name"] == f"{rt.plural}.{rt.group}"), None)
    assert crd is not None, f"{upstream.name} {upstream.tested} ships no CRD: {upstream.missing()}"
    served = {v["name"] for v in crd["spec"]["versions"] if v.get("served")}
    assert rt.version in served, f"{upstream.missing()} (it serves {sorted(served)})"


def test_the_apiserver_serves_them_once_installed_and_says_what_is_missing(kube, kubeflow_crds):
    """Discovery, as the operator does it at start-up, on the real apiserver: the upstream
    CRDs installed serve every API the operator uses; an API version nobody serves is
    reported with a message naming the API, the project, and what it is needed for."""
    install_crds(kube, crd_files("kueue"))
    install_crds(kube, crd_files("trainer"))

    async def discover() -> tuple[dict[compat.Upstream, bool], bool]:
        with ThreadPoolExecutor(2) as pool:
            api = Kube(kube.api_client(), pool)
            found = await compat.served(api)
            future = dataclasses.replace(
                compat.KUEUE, rt=dataclasses.replace(compat.KUEUE.rt, version="v9")
            )
            return found, await api.served(future.rt)

    found, future_served = asyncio.run(discover())
    missing = [u.missing() for u, ok in found.items() if not ok]
    assert not missing, "\n".join(missing)
    assert future_served is False
    message = dataclasses.replace(
        compat.KUEUE, rt=dataclasses.replace(compat.KUEUE.rt, version="v9")
    ).missing()
    assert message.startswith("workloads.kueue.x-k8s.io/v9 is not served: Kueue")
    assert "tested with v0.17.1" in message and "scheduling.queueName" in message
