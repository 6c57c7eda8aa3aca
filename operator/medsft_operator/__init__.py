"""medsft control plane: the Kubernetes operator for MedSFTRun, CurationJob, SFTJob, EvalJob.

How it is put together (each module's docstring says more):

* :mod:`.api` — the custom resources as pydantic models, CRDs generated from them.
* :mod:`.plan` — a run's stages: effective specs and content hashes (what a new
  generation may reuse). :mod:`.layout` and :mod:`.names` — where artifacts go in storage
  and what every child is called (deterministic, so a restarted operator finds its work).
* :mod:`.builders` — pure functions from specs to job configs and manifests (ConfigMap,
  Indexed batch Job, PyTorchJob, stage resources); ``medsft render`` and ``medsft run
  --local`` use the same functions.
* :mod:`.reconcilers` — level-triggered reconcilers: read the world, create what is missing,
  return the status describing it; one file per kind (``run``, ``curation``, ``sft``,
  ``eval``) over what they share (``base``, and ``stage`` for the three stage kinds).
  :mod:`.fold` turns children and storage into status.
* :mod:`.controller` — one reconcile per object at a time, status written only when it
  changed (guarded by ``resourceVersion``), Events for transitions, errors retried with
  backoff as ``kopf.TemporaryError``, secrets scrubbed from everything it says.
* :mod:`.handlers` (kopf), :mod:`.poller` (progress and re-checks), :mod:`.leader` (Lease),
  :mod:`.health` (``/healthz``, ``/metrics``), :mod:`.main` (``python -m medsft_operator``).
* :mod:`.rbac` — the operator's least-privilege RBAC as data (the Helm chart renders it).
"""
