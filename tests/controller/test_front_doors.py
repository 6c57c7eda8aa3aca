"""The operator's two front doors, ``medsft operator`` (what the Helm chart's Deployment runs:
the image's entrypoint is ``medsft``, its args ``operator``) and ``python -m medsft_operator``
(what the tests and a checkout run), are one command: the same flags, the same operator."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from controller.operator_harness import FRONT_DOORS, REPO
from kubernetes import client


def _flags(command: tuple[str, ...]) -> set[str]:
    env = {
        **os.environ,
        "COLUMNS": "200",  # no option name cut by the help's layout
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "pipelines")),
    }
    out = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out.stdout)) - {"--help"}


def test_both_front_doors_list_the_same_flags():
    python_m, medsft = (_flags(command) for command in FRONT_DOORS.values())
    assert python_m == medsft
    # What the tests and the chart's users pass, and both spellings of standalone.
    assert {
        "--kubeconfig",
        "--namespace",
        "--all-namespaces",
        "--http-port",
        "--metrics-port",
        "--poll-interval",
        "--lease-namespace",
        "--identity",
        "--log-level",
        "--log-format",
        "--standalone",
        "--no-leader-election",
    } <= medsft


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_each_front_door_runs_the_operator_with_the_deployments_flags(
    kube, cluster, start_operator, front_door
):
    """Each door, given the flags the harness gives (kubeconfig of the operator's
    ServiceAccount, ports, namespace, Lease namespace, identity), takes the Lease under
    that identity in that namespace and serves /healthz on that port."""
    identity = "door-" + front_door.split()[-1].replace("_", "-")
    op = start_operator(identity, front_door=front_door)
    op.wait_leading()
    assert (op.health() or {}).get("identity") == identity
    lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(
        "medsft-operator", cluster.namespace
    )
    assert lease.spec.holder_identity == identity
