"""The operator's least-privilege RBAC, as data.

The Helm chart renders exactly these rules (a test compares), and the operator tests run
the operator as a ServiceAccount bound to them, proving they suffice; other tests prove
what they do not allow. Why each rule exists:

* medsft kinds: watch them (kopf), create stage resources for runs, patch kopf's
  bookkeeping annotations and finalizer, delete superseded or out-of-history stages;
* their ``status``: the operator is the only writer of status;
* their ``finalizers``: setting ``blockOwnerDeletion`` on children's ownerReferences
  (enforced by the OwnerReferencesPermissionEnforcement admission plugin where enabled);
* batch Jobs, PyTorchJobs and TrainJobs: create the workloads and watch them; never update,
  patch or delete (children go by garbage collection with their owner; ``suspend`` is
  Kueue's to flip);
* Kueue's Workloads: read only, for the Queued / Admitted / Evicted status;
* ConfigMaps: create the job configs (immutable) and read them back;
* Secrets: read *only by name* the storage / CA / API-key Secrets a spec references —
  no list or watch, so the operator cannot enumerate a namespace's Secrets;
* Events: report transitions, and read a child's own (pods its controller could not create);
* Pods: read only, the stage pods' state (a failed attempt's survivors; why pods do not start);
* Leases (namespaced, in the operator's own namespace): leader election.
"""

from __future__ import annotations

from typing import Any

from medsft_operator.api.k8s import GROUP

Rule = dict[str, Any]

KIND_PLURALS = ["curationjobs", "sftjobs", "evaljobs", "medsftruns"]

NAMESPACED_RULES: list[Rule] = [
    {
        "apiGroups": [GROUP],
        "resources": KIND_PLURALS,
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {
        "apiGroups": [GROUP],
        "resources": [f"{p}/status" for p in KIND_PLURALS],
        "verbs": ["get", "patch"],
    },
    {
        "apiGroups": [GROUP],
        "resources": [f"{p}/finalizers" for p in KIND_PLURALS],
        "verbs": ["update"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create"]},
    {
        "apiGroups": ["kubeflow.org"],
        "resources": ["pytorchjobs"],
        "verbs": ["get", "list", "watch", "create"],
    },
    {
        "apiGroups": ["trainer.kubeflow.org"],
        "resources": ["trainjobs"],
        "verbs": ["get", "list", "watch", "create"],
    },
    {
        "apiGroups": ["kueue.x-k8s.io"],
        "resources": ["workloads"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Post transitions; list a child's own Events (by its UID) for pods its controller
    # could not create (medsft_operator.diagnose).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
    # A failed attempt's pods must be gone before the next attempt starts (never two beside);
    # an unfinished child's pods say why they do not start (image pulls, scheduling).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
]


def cluster_rules() -> list[Rule]:
    """Rules that must be cluster-wide whatever the operator watches: none. kopf's dynamic
    scanning of CRDs and namespaces is off and there is no cluster-wide peering object."""
    return []


def namespaced_rules() -> list[Rule]:
    """Rules in every watched namespace (cluster-wide when every namespace is watched)."""
    return [dict(rule) for rule in NAMESPACED_RULES]


def leader_election_rules(lease_name: str) -> list[Rule]:
    """Rules of the namespaced Role in the operator's namespace (``create`` cannot be
    limited by name; reading and renewing are limited to the one Lease)."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name],
            "verbs": ["get", "update"],
        },
    ]


def manifests(
    *,
    namespace: str,
    service_account: str = "medsft-operator",
    name: str = "medsft-operator",
    lease_name: str = "medsft-operator",
) -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole + binding (every namespace watched) and the
    leader-election Role + binding in the operator's namespace."""
    subject = [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace},
            "automountServiceAccountToken": True,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": cluster_rules() + namespaced_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": subject,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": f"{name}-leader-election", "namespace": namespace},
            "rules": leader_election_rules(lease_name),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{name}-leader-election", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{name}-leader-election",
            },
            "subjects": subject,
        },
    ]
