"""Operator benchmark: many resources against a real kube-apiserver, the operator as a process.

Phase 1 creates ``--runs`` MedSFTRuns in one namespace as fast as ``--concurrency`` client
threads can, and measures, from the moment each create request is sent to the moment a
watch delivers the child:

* run -> its CurationJob (the MedSFTRun reconcile), and CurationJob -> its worker Job;
* API requests per reconcile, counted by the apiserver itself (``apiserver_request_total``,
  minus the benchmark's own requests) and by the operator (its reconcilers' share);
* the operator's resident memory (current and peak) and the wall time.

Phase 2 creates ``--sft`` SFTJobs on an existing dataset: create -> PyTorchJob, and create ->
Succeeded, with the harness's fake training operator moving the PyTorchJobs.

Everything is real (etcd, kube-apiserver with RBAC, kube-controller-manager, MinIO, the
operator as ``python -m medsft_operator``) except the training operator, which cannot run
without GPUs. Run:  .venv/bin/python benchmarks/operator_bench.py --runs 500 --sft 100
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from controller.operator_harness import (  # noqa: E402
    STORAGE_SECRET,
    Cluster,
    OperatorProcess,
    Storage,
    install_medsft_crds,
    resource,
    run_spec,
    sft_spec,
    wait_for,
)
from kubernetes import client, watch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from harness.controlplane import ControlPlane  # noqa: E402
from harness.fake_training_operator import FakeTrainingOperator  # noqa: E402
from harness.minio_server import MinioServer  # noqa: E402
from harness.testbin import shared_dir  # noqa: E402

NAMESPACE = "bench"


class Seen:
    """First time a watch delivered each object, by kind and name."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.times: dict[tuple[str, str], float] = {}
        self.phases: dict[tuple[str, str], str] = {}
        self.requests = 0  # what these watches cost the apiserver (list + watch each)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, kind: str, lister: Any, *args: Any) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.requests += 1
                try:
                    for event in watch.Watch().stream(
                        lister, *args, timeout_seconds=5, _request_timeout=10
                    ):
                        obj = event["object"]
                        meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata.to_dict()
                        key = (kind, meta["name"])
                        self.times.setdefault(key, time.perf_counter())
                        if isinstance(obj, dict) and (obj.get("status") or {}).get("phase"):
                            self.phases[key] = obj["status"]["phase"]
                        if self._stop.is_set():
                            return
                except Exception:  # a watch that expires or drops is simply restarted
                    time.sleep(0.05)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()


def apiserver_requests(api: client.ApiClient) -> dict[tuple[str, str], float]:
    """``apiserver_request_total`` by (verb, resource), read from the apiserver's /metrics."""
    request = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api.call_api(*request)
    response.read()
    totals: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                key = (sample.labels.get("verb", ""), sample.labels.get("resource", ""))
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident memory of a process, in MB (MiB)."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    kb = lambda name: int(fields[name].split()[0])  # noqa: E731
    return kb("VmRSS") / 1024, kb("VmHWM") / 1024


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def settle(op: OperatorProcess, *, quiet_s: float = 3.0, timeout: float = 600) -> None:
    """Wait until the operator made no event-driven reconcile for ``quiet_s`` (polls go on)."""
    deadline = time.monotonic() + timeout
    last, since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        count = op.metric("medsft_reconciles_total", trigger="event")
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.25)


def counters(op: OperatorProcess) -> dict[str, float]:
    """The operator's own counters, split by what triggered the work."""
    return {
        f"{name}.{trigger}": op.metric(f"medsft_{name}_total", trigger=trigger)
        for name in ("reconciles", "api_requests")
        for trigger in ("event", "poll")
    }


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--sft", type=int, default=100)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="client threads creating resources"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=30.0, help="operator poll interval (s)"
    )
    parser.add_argument(
        "--rate", type=float, default=0, help="MedSFTRuns created per second (0: one burst)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for each phase")
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it stuck?
    # SIGTERM (e.g. from `timeout`) unwinds normally, so the servers started here are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {
        "runs": args.runs,
        "sft": args.sft,
        "concurrency": args.concurrency,
        "rate_per_s": args.rate or "burst",
        "poll_interval_s": args.poll_interval,
    }
    with tempfile.TemporaryDirectory(prefix="medsft-opbench-") as tmp, ControlPlane() as kube:
        (Path(tmp) / "minio").mkdir()
        minio = MinioServer(Path(tmp) / "minio").start()
        try:
            api = kube.api_client()
            crd = shared_dir() / "third_party" / "kubeflow" / "kubeflow.org_pytorchjobs.yaml"
            kube.kubectl("apply", "--server-side", "-f", str(crd))
            wait_for(  # kubectl wait errors out while the CRD has no conditions yet: ask again
                lambda: (
                    kube.kubectl(
                        "wait",
                        "--for=condition=Established",
                        "--timeout=60s",
                        "crd/pytorchjobs.kubeflow.org",
                        check=False,
                    ).returncode
                    == 0
                ),
                what="the PyTorchJob CRD",
            )
            install_medsft_crds(kube)
            client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
            minio.client().make_bucket("bench")
            storage = Storage(minio.endpoint, "bench", minio.access_key, minio.secret_key)
            cluster = Cluster(kube, NAMESPACE)
            cluster.secret(
                STORAGE_SECRET, {"accessKey": storage.access_key, "secretKey": storage.secret_key}
            )

            op = OperatorProcess(
                Path(kube.kubeconfig),
                NAMESPACE,
                Path(tmp) / "operator.log",
                namespaces=[NAMESPACE],
                identity="bench",
                env={
                    "MEDSFT_POLL_INTERVAL_S": str(args.poll_interval),
                    "MEDSFT_LEASE_DURATION_S": "15",
                    "MEDSFT_LEASE_RENEW_S": "5",
                },
            ).start()
            op.wait_leading()
            say("operator leading")
            assert op.proc is not None
            results["rss_idle_mb"] = round(rss_mb(op.proc.pid)[0], 1)

            seen = Seen(api)
            custom = client.CustomObjectsApi(api)
            seen.start(
                "CurationJob",
                custom.list_namespaced_custom_object,
                "medsft.io",
                "v1alpha1",
                NAMESPACE,
                "curationjobs",
            )
            seen.start(
                "MedSFTRun",
                custom.list_namespaced_custom_object,
                "medsft.io",
                "v1alpha1",
                NAMESPACE,
                "medsftruns",
            )
            seen.start("Job", client.BatchV1Api(api).list_namespaced_job, NAMESPACE)
            seen.start(
                "PyTorchJob",
                custom.list_namespaced_custom_object,
                "kubeflow.org",
                "v1",
                NAMESPACE,
                "pytorchjobs",
            )
            seen.start(
                "SFTJob",
                custom.list_namespaced_custom_object,
                "medsft.io",
                "v1alpha1",
                NAMESPACE,
                "sftjobs",
            )
            time.sleep(1.0)  # let the watches open before the clock starts

            # ---------------------------------------------------------------- phase 1
            before = apiserver_requests(api)
            counted_before = counters(op)
            pids = {"operator": op.proc.pid} | {n: p.pid for n, p in kube.procs.items()}
            cpu_before = {n: cpu_seconds(pid) for n, pid in pids.items()}
            sent: dict[str, float] = {}
            spec = run_spec(storage)

            start = time.perf_counter()

            def create(i: int) -> None:
                if args.rate:  # paced: run i is due at start + i / rate
                    time.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
                name = f"run-{i:04d}"
                sent[name] = time.perf_counter()
                cluster.create(resource("MedSFTRun", name, spec))

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(create, range(args.runs)))
            created_in = time.perf_counter() - start
            say(f"created {args.runs} MedSFTRuns in {created_in:.1f}s")
            names = list(sent)
            wait_for(
                lambda: all(("CurationJob", f"{n}-curation-g1") in seen.times for n in names),
                timeout=args.timeout,
                what="every run's CurationJob",
            )
            wait_for(
                lambda: all(("Job", f"{n}-curation-g1-work") in seen.times for n in names),
                timeout=args.timeout,
                what="every CurationJob's worker Job",
            )
            last_child = max(seen.times[("Job", f"{n}-curation-g1-work")] for n in names)
            say("every child seen; waiting for the operator to settle")
            settle(op)
            after = apiserver_requests(api)
            counted = {k: v - counted_before[k] for k, v in counters(op).items()}
            reconciles = counted["reconciles.event"] + counted["reconciles.poll"]
            current, peak = rss_mb(op.proc.pid)
            cpu = {n: round(cpu_seconds(pid) - cpu_before[n], 1) for n, pid in pids.items()}

            run_to_curation = [
                seen.times[("CurationJob", f"{n}-curation-g1")] - sent[n] for n in names
            ]
            curation_to_job = [
                seen.times[("Job", f"{n}-curation-g1-work")]
                - seen.times[("CurationJob", f"{n}-curation-g1")]
                for n in names
            ]
            run_to_job = [seen.times[("Job", f"{n}-curation-g1-work")] - sent[n] for n in names]
            delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            ours = {k: v for k, v in delta.items() if v > 0 and k[0] != "WATCH"}
            ours[("POST", "medsftruns")] = (
                ours.get(("POST", "medsftruns"), 0) - args.runs
            )  # the benchmark's
            operator_requests = sum(v for v in ours.values() if v > 0)
            results["phase1"] = {
                "create_seconds": round(created_in, 2),
                "create_rate_per_s": round(args.runs / created_in, 1),
                "wall_seconds_to_last_job": round(last_child - start, 2),
                "run_to_curationjob_s": {
                    k: round(v, 4) for k, v in percentiles(run_to_curation).items()
                },
                "curationjob_to_job_s": {
                    k: round(v, 4) for k, v in percentiles(curation_to_job).items()
                },
                "run_to_job_s": {k: round(v, 4) for k, v in percentiles(run_to_job).items()},
                "reconciles_event": counted["reconciles.event"],
                "reconciles_poll": counted["reconciles.poll"],
                "apiserver_requests_by_operator": operator_requests,
                "apiserver_requests_per_run": round(operator_requests / args.runs, 1),
                "apiserver_requests_per_reconcile": round(operator_requests / reconciles, 2),
                "reconciler_requests_per_event_reconcile": round(
                    counted["api_requests.event"] / max(1, counted["reconciles.event"]), 2
                ),
                "reconciler_requests_per_poll": round(
                    counted["api_requests.poll"] / max(1, counted["reconciles.poll"]), 2
                ),
                "requests_by_verb_resource": {
                    f"{v} {r}": int(n) for (v, r), n in sorted(ours.items()) if n > 0
                },
                "rss_mb": round(current, 1),
                "rss_peak_mb": round(peak, 1),
                "cpu_seconds": cpu,
            }

            # ---------------------------------------------------------------- phase 2
            say("phase 1 done")
            if args.sft:
                fake = FakeTrainingOperator(kube.api_client(), interval=0.2).start()
                try:
                    dataset = "s3://bench/datasets/d"
                    storage.write_dataset(dataset)
                    sft_sent: dict[str, float] = {}
                    sspec = sft_spec(
                        storage,
                        nodes=1,
                        gpusPerNode=8,
                        dataset={"manifestUri": f"{dataset}/manifest.json"},
                    )

                    def create_sft(i: int) -> None:
                        name = f"ft-{i:04d}"
                        storage.write_model(
                            f"s3://bench/{NAMESPACE}/{name}/g1/sft"
                        )  # what training exports
                        sft_sent[name] = time.perf_counter()
                        cluster.create(resource("SFTJob", name, sspec))

                    start2 = time.perf_counter()
                    with ThreadPoolExecutor(args.concurrency) as pool:
                        list(pool.map(create_sft, range(args.sft)))
                    sft_names = list(sft_sent)
                    try:
                        wait_for(
                            lambda: all(
                                seen.phases.get(("SFTJob", n)) == "Succeeded" for n in sft_names
                            ),
                            timeout=args.timeout,
                            what="every SFTJob Succeeded",
                        )
                    except AssertionError:
                        for n in sft_names[:3]:
                            say(f"{n}: {json.dumps(cluster.status('SFTJob', n))[:1500]}")
                        raise
                    to_pj = [seen.times[("PyTorchJob", f"{n}-a0")] - sft_sent[n] for n in sft_names]
                    results["phase2"] = {
                        "sft_to_pytorchjob_s": {
                            k: round(v, 4) for k, v in percentiles(to_pj).items()
                        },
                        "wall_seconds_all_succeeded": round(time.perf_counter() - start2, 2),
                        "rss_peak_mb": round(rss_mb(op.proc.pid)[1], 1),
                    }
                finally:
                    fake.stop()
            seen.stop()
            results["operator_errors_logged"] = sum(
                1
                for line in (Path(tmp) / "operator.log").read_text().splitlines()
                if '"severity": "error"' in line
            )
            op.stop()
        finally:
            minio.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
