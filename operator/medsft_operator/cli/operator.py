"""``medsft operator`` and ``python -m medsft_operator``: run the operator.

One command behind both front doors, so both take the same flags: the Helm chart's
Deployment runs ``medsft operator`` (the operator image's entrypoint is ``medsft``), the
tests and a development checkout run ``python -m medsft_operator``
(:mod:`medsft_operator.__main__`).
"""

from __future__ import annotations

from typing import Annotated

import typer


def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch only this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster).",
            show_default=False,
        ),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Port of /healthz and /metrics.", show_default="8080")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="A separate port for /metrics.", show_default=False)
    ] = None,
    poll_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between progress polls.", show_default="30"),
    ] = None,
    lease_namespace: Annotated[
        str | None,
        typer.Option(help="Namespace of the leader-election Lease.", show_default="default"),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option(help="Holder identity in the Lease.", show_default="host name and pid"),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error.", show_default="info")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="json or plain.", show_default="json")
    ] = None,
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone",
            "--no-leader-election",
            help="No leader election (run one replica only).",
        ),
    ] = False,
) -> None:
    """Run the operator (what the Helm chart's Deployment runs).

    Settings come from MEDSFT_* environment variables (see the chart); flags override them.
    """
    import medsft_operator.main as entry

    if namespace and all_namespaces:
        raise typer.BadParameter("give --namespace or --all-namespaces, not both")
    if log_format is not None and log_format not in ("json", "plain", "text"):
        raise typer.BadParameter("use json or plain", param_hint="--log-format")
    if log_level is not None and log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    raise typer.Exit(
        entry.run_operator(
            namespaces=[] if all_namespaces else namespace or None,
            kubeconfig=kubeconfig,
            http_port=http_port,
            metrics_port=metrics_port,
            poll_interval_s=poll_interval,
            lease_namespace=lease_namespace,
            identity=identity,
            log_level=log_level,
            log_format=log_format,
            standalone=True if standalone else None,
        )
    )
