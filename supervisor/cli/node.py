"""Commands for the node's own files: the agent's config directory and the agent's identity.

``config render|diff|import``, ``certs check|csr``, ``kubeconfig render`` and ``apf render``.
Each parses, calls the functions of one module of :mod:`supervisor.node` (``agentconfig``,
``configimport``, ``identity``, ``credentials``, ``apf``), prints and returns; errors are raised
as :class:`~supervisor.base.errors.SupervisorError` and turned into one line and an exit code by
the entry point. Those modules are imported inside the commands: ``cli`` imports this module on
every gate call, which must not pay for ``cryptography`` or ``yaml``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from supervisor.base.catalog import EventId
from supervisor.base.errors import ConfigError, IdentityError, UsageError
from supervisor.base.log import get_logger
from supervisor.cli.common import (
    JsonOpt,
    Settings,
    config_path,
    emit_json,
    with_settings,
)
from supervisor.storage.config import Config, IdentityConfig

if TYPE_CHECKING:
    from supervisor.node.agentconfig import RenderResult
    from supervisor.node.configimport import Addition


def _group(help_text: str) -> typer.Typer:
    """A command group (``config``, ``certs``, ...) with its one-line help."""
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


config_app = _group("The agent's node-local config directory (one file per option).")
certs_app = _group("The agent's client certificate: check it, or make a key and CSR.")
kubeconfig_app = _group("A kubeconfig for the agent's own identity.")
apf_app = _group("API Priority and Fairness objects for the agents' group.")

OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="config directory [default: agent_config_dir]", show_default=False
    ),
]
PruneOpt = Annotated[
    bool,
    typer.Option(
        "--prune",
        help="also delete option files that the render does not produce (not in the agent "
        "table, not a stability default); without it they are kept as they are",
    ),
]


def register(app: typer.Typer) -> None:
    """Add the node commands to the main application."""
    app.add_typer(config_app, name="config")
    app.add_typer(certs_app, name="certs")
    app.add_typer(kubeconfig_app, name="kubeconfig")
    app.add_typer(apf_app, name="apf")


def _say(lines: list[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _short(value: str | None, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _identity(cfg: Config, command: str) -> IdentityConfig:
    if cfg.identity is None:
        where = cfg.config_file or "the config file"
        raise ConfigError(
            f"{command}: no [identity] configured: set identity.cert and "
            f"identity.key in {where} (or --set identity.cert=...)"
        )
    return cfg.identity


# --- config ------------------------------------------------------------------------------------


def _render_lines(result: RenderResult, verb: str) -> list[str]:
    a, c, r, u, k = (
        len(result.added),
        len(result.changed),
        len(result.removed),
        len(result.unchanged),
        len(result.kept),
    )
    kept = f", {k} unmanaged kept" if k else ""
    if not result.any_change:
        head = f"{result.output}: up to date ({u} options{kept})"
    elif verb == "render":
        head = f"{result.output}: added {a}, changed {c}, removed {r}, unchanged {u}{kept}"
    else:
        head = f"{result.output}: a render would add {a}, change {c}, remove {r} (unchanged {u})"
        head += f", keep {k} unmanaged" if k else ""
    lines = [head]
    for ch in result.changes:
        if ch.action == "added":
            lines.append(f"+ {ch.option} = {_short(ch.new)}")
        elif ch.action == "changed":
            lines.append(f"~ {ch.option}: {_short(ch.old)} -> {_short(ch.new)}")
        else:
            lines.append(f"- {ch.option} (was {_short(ch.old)})")
    lines += [f"= {name} (unmanaged: kept as it is)" for name in result.kept]
    if k:
        lines.append(
            f"note: {k} option files are not in [agent]; they are kept as they are: "
            f"`config import {result.output}` adopts them, `--prune` removes them"
        )
    lines += [f"warning: {w}" for w in result.warnings]
    return lines


@config_app.command("render")
@with_settings(state=False, cluster=False)
def config_render(
    output: OutputDirOpt = None,
    prune: PruneOpt = False,
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """Write the agent's config directory from the agent table, replacing it atomically.

    One file per option (name = option, content = value), plus the stability defaults.
    Unchanged options keep their files. Option files the render does not produce are kept as
    they are (and listed) unless --prune is given; `config import DIR` adopts them.
    """
    from supervisor.node.agentconfig import render

    cfg = settings.load()
    result = render(cfg, output, prune=prune)
    if json_out:
        emit_json(result.to_json(values=True))
    else:
        _say(_render_lines(result, "render"))


@config_app.command("diff")
@with_settings(state=False, cluster=False)
def config_diff(
    output: OutputDirOpt = None,
    prune: PruneOpt = False,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="exit 1 when a render would change something")
    ] = False,
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """Show what `config render` (with the same --prune) would change, writing nothing."""
    from supervisor.node.agentconfig import plan

    cfg = settings.load()
    result = plan(cfg, output, prune=prune)
    if json_out:
        emit_json(result.to_json(values=True))
    else:
        _say(_render_lines(result, "diff"))
    if exit_code and result.any_change:
        raise typer.Exit(1)


@config_app.command("import")
@with_settings(state=False, cluster=False)
def config_import(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="an existing config directory (one file per option)",
            show_default=False,
        ),
    ],
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="add the options to the config file's agent table, atomically, keeping the "
            "rest of the file as it is (without it: print the table)",
        ),
    ] = False,
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """Take an existing config directory into the agent table, every option kept byte for byte.

    Prints the table (TOML) to add to the config file, or adds it with --write. A trailing
    newline is kept as \\n, so a render writes every file back with its exact bytes.
    """
    from supervisor.node.configimport import prepare, read_directory, write_into

    cfg = settings.load()
    imported = read_directory(directory)
    path = cfg.config_file or config_path(settings.config)
    addition = prepare(path, imported, cfg.agent if cfg.config_file else {})
    written = write and write_into(addition)
    if written:
        get_logger().info(EventId.CONFIG_IMPORTED, config=str(path), source=str(directory))
    if json_out:
        emit_json(addition.to_json(written=written) | {"warnings": list(imported.warnings)})
    elif write:
        _say(_import_lines(cfg, addition))
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(addition.snippet().encode())
        sys.stdout.flush()
    # After the answer, and only on success: an error is always the one line on stderr.
    for warning in imported.warnings:
        sys.stderr.write(f"warning: {warning}\n")


def _import_lines(cfg: Config, addition: Addition) -> list[str]:
    """What ``config import --write`` says it did."""
    from supervisor.node.configimport import toml_string

    present = len(addition.present)
    lines = [
        f"{addition.config}: added {len(addition.added)} options to [agent] from "
        f"{addition.source}" + (f" ({present} already there)" if present else "")
    ]
    if os.path.realpath(cfg.agent_config_dir) != os.path.realpath(addition.source):
        setting = toml_string(os.path.abspath(addition.source))
        lines.append(
            f"note: agent_config_dir is {cfg.agent_config_dir}: if the agent reads "
            f"{addition.source}, set agent_config_dir = {setting} so that config render "
            "writes there"
        )
    return lines


# --- certs -------------------------------------------------------------------------------------


@certs_app.command("check")
@with_settings(state=False, cluster=False)
def certs_check(
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """Check the agent's certificate, key and CA. Exit 0 ok (warnings allowed), 78 problems."""
    from supervisor.core.state import iso_seconds
    from supervisor.node.identity import check_identity, identity_message, render_user

    cfg = settings.load()
    ident = _identity(cfg, "certs check")
    report = check_identity(ident, cfg.node_name, time.time())
    if json_out:
        emit_json(report.to_json())
    else:
        lines = [
            f"certificate  {ident.cert}",
            f"key          {ident.key}",
            f"ca           {ident.ca or 'not set (chain not checked)'}",
            f"expected     CN={render_user(ident.user, cfg.node_name)}, O={ident.group}",
        ]
        if report.subject is not None:
            lines.append(f"subject      {report.subject}")
        if report.not_after is not None:
            lines.append(f"expires      {iso_seconds(report.not_after)} ({report.days_left}d left)")
        lines.append(
            "result       " + ("ok" if report.ok else f"BAD ({len(report.problems)} problems)")
        )
        lines += [f"problem: {p}" for p in report.problems]
        lines += [f"warning: {w}" for w in report.warnings]
        _say(lines)
    if not report.ok:
        raise IdentityError(identity_message(report))


@certs_app.command("csr")
@with_settings(state=False, cluster=False)
def certs_csr(
    out: Annotated[
        Path,
        typer.Option("--out", help="directory for the key, CSR and manifest", show_default=False),
    ],
    name: Annotated[str, typer.Option("--name", help="file name stem")] = "cilium-agent",
    key_type: Annotated[str, typer.Option("--key-type", help="ec (P-256) or rsa")] = "ec",
    rsa_bits: Annotated[int, typer.Option("--rsa-bits", help="RSA key size")] = 3072,
    expiration: Annotated[
        str | None,
        typer.Option(
            "--expiration",
            help="requested lifetime for the Kubernetes CSR API, e.g. 90d",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace existing files")] = False,
    json_out: JsonOpt = False,
    *,
    settings: Settings,
) -> None:
    """Make a new private key (0600) and a CSR with CN=<user>, O=<group> for this node.

    Writes NAME.key, NAME.csr (PEM, for the fleet's PKI) and NAME.csr.yaml (a Kubernetes
    CertificateSigningRequest for the kube-apiserver-client signer).
    """
    from supervisor.core.durations import DurationError, parse_duration
    from supervisor.node.credentials import make_csr
    from supervisor.node.identity import render_user

    cfg = settings.load()
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"--name {name!r}: expected a plain file name stem")
    seconds = None
    if expiration is not None:
        try:
            seconds = int(parse_duration(expiration))
        except DurationError as exc:
            raise UsageError(f"--expiration: {exc}") from None
        if seconds < 600:
            raise UsageError(f"--expiration {expiration!r}: Kubernetes needs at least 10m")
    if key_type not in ("ec", "rsa"):
        raise UsageError(f"--key-type {key_type!r}: expected ec or rsa")
    ident = cfg.identity or IdentityConfig(cert="", key="")
    user = render_user(ident.user, cfg.node_name)
    files = make_csr(
        out,
        user=user,
        group=ident.group,
        node_name=cfg.node_name,
        name=name,
        key_type="ec" if key_type == "ec" else "rsa",
        rsa_bits=rsa_bits,
        expiration_seconds=seconds,
        overwrite=force,
    )
    get_logger().info(
        EventId.CERTS_CSR_WRITTEN, key=str(files.key), csr=str(files.csr), subject=files.subject
    )
    if json_out:
        emit_json(files.to_json())
    else:
        _say(
            [
                f"key       {files.key} (mode 0600)",
                f"csr       {files.csr} ({files.subject})",
                f"manifest  {files.manifest} (kubectl apply -f, then kubectl certificate approve)",
            ]
        )


# --- kubeconfig --------------------------------------------------------------------------------


@kubeconfig_app.command("render")
@with_settings(state=False, cluster=False)
def kubeconfig_render(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="file to write [default: print to stdout]", show_default=False),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", help="apiserver URL [default: identity.server]", show_default=False
        ),
    ] = None,
    cluster: Annotated[str, typer.Option("--cluster", help="cluster entry name")] = "kubernetes",
    force: Annotated[
        bool, typer.Option("--force", help="replace a file not written by kubeconfig render")
    ] = False,
    *,
    settings: Settings,
) -> None:
    """Render a kubeconfig with the agent's certificate, key and CA paths (k8s-kubeconfig-path)."""
    from supervisor.node.credentials import check_server_url, render_kubeconfig, write_kubeconfig

    cfg = settings.load()
    ident = _identity(cfg, "kubeconfig render")
    if server is not None:
        url = check_server_url(server, "--server")
    elif ident.server is not None:
        url = check_server_url(ident.server, "identity.server")
    else:
        raise ConfigError(
            "kubeconfig render: the apiserver URL is not set: set identity.server "
            "or pass --server https://HOST:6443"
        )
    if not cluster or any(c.isspace() for c in cluster):
        raise UsageError(f"--cluster {cluster!r}: expected a name without spaces")
    text = render_kubeconfig(ident, cfg.node_name, url, cluster=cluster)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_kubeconfig(out, text, force=force)
    get_logger().info(EventId.KUBECONFIG_WRITTEN, path=str(out), server=url)
    _say([f"wrote {out} (server {url})"])


# --- apf ---------------------------------------------------------------------------------------


@apf_app.command("render")
@with_settings(state=False, cluster=False, node=False)
def apf_render(
    name: Annotated[str, typer.Option("--name", help="name of both objects")] = "cilium-agents",
    group: Annotated[
        str | None,
        typer.Option(
            "--group", help="the agents' group [default: identity.group]", show_default=False
        ),
    ] = None,
    shares: Annotated[
        int, typer.Option("--shares", help="nominalConcurrencyShares of the priority level")
    ] = 20,
    lendable_percent: Annotated[
        int, typer.Option("--lendable-percent", help="share other levels may borrow (0..100)")
    ] = 0,
    queues: Annotated[int, typer.Option("--queues", help="number of queues (1..512)")] = 128,
    hand_size: Annotated[
        int, typer.Option("--hand-size", help="queues each flow (agent) may use")
    ] = 6,
    queue_length_limit: Annotated[
        int, typer.Option("--queue-length-limit", help="requests one queue holds before 429")
    ] = 50,
    matching_precedence: Annotated[
        int, typer.Option("--matching-precedence", help="FlowSchema precedence (lower wins)")
    ] = 1000,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="file to write [default: print to stdout]", show_default=False),
    ] = None,
    *,
    settings: Settings,
) -> None:
    """Render a FlowSchema (the agents' group, distinguished by user) and its priority level."""
    from supervisor.node.apf import ApfSettings, render_apf
    from supervisor.node.credentials import write_file

    cfg = settings.load()
    default_group = cfg.identity.group if cfg.identity else IdentityConfig("", "").group
    apf = ApfSettings(
        name=name,
        group=group if group is not None else default_group,
        nominal_concurrency_shares=shares,
        lendable_percent=lendable_percent,
        queues=queues,
        hand_size=hand_size,
        queue_length_limit=queue_length_limit,
        matching_precedence=matching_precedence,
    )
    text = render_apf(apf)
    if out is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_file(out, text.encode(), mode=0o644, overwrite=True)
    _say([f"wrote {out}"])
