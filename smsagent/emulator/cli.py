"""`smsagent emulator`: parse the flags, start the emulator, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from smsagent.emulator.commands import DeliveryMode
from smsagent.emulator.faults import FaultSettings
from smsagent.emulator.iam import DEFAULT_TOKEN_TTL_S, IamUser
from smsagent.emulator.objectstore import DEFAULT_REGION, ObjectStoreOptions, bucket_names
from smsagent.emulator.runtime import (
    DEFAULT_DISCONNECT_AFTER_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_REDELIVER_AFTER_S,
    Emulator,
    EmulatorOptions,
)
from smsagent.emulator.server import serve

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STARTUP = 3
DEFAULT_PORT = 8090

# Fault flags and the FaultSettings fields they set.
FAULT_FLAGS = {
    "latency_s": "--latency",
    "error_rate": "--error-rate",
    "error_status": "--error-status",
    "retry_after_s": "--retry-after",
    "reset_rate": "--reset-rate",
    "malformed_rate": "--malformed-rate",
    "expire_tokens": "--expire-tokens",
    "path_pattern": "--fault-path",
    "max_faults": "--max-faults",
}


class UsageError(Exception):
    """A flag is missing, malformed or inconsistent; the message names it."""


def build_parser() -> argparse.ArgumentParser:
    """The flags of `smsagent emulator`."""
    parser = argparse.ArgumentParser(
        prog="smsagent emulator",
        description="Serve a local SMS-compatible control plane (agent and console endpoints).",
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    serving.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one")
    serving.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS")
    serving.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serving.add_argument(
        "--state", type=Path, help="SQLite file that keeps all data across restarts"
    )
    serving.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413"
    )
    auth = parser.add_argument_group("authentication")
    auth.add_argument("--ak", required=True, help="access key whose signatures are accepted")
    auth.add_argument("--sk", required=True, help="its secret key")
    auth.add_argument("--token", help="a token accepted as X-Auth-Token")
    auth.add_argument("--iam-user", help="IAM user that may get tokens from POST /v3/auth/tokens")
    auth.add_argument("--iam-password", help="that user's password")
    auth.add_argument("--iam-domain", help="that user's account (domain) name")
    auth.add_argument("--token-ttl", type=float, default=DEFAULT_TOKEN_TTL_S, help="seconds")
    commands = parser.add_argument_group("commands")
    commands.add_argument(
        "--command-delivery", choices=[mode.value for mode in DeliveryMode], default="once"
    )
    commands.add_argument(
        "--redeliver-after",
        type=float,
        default=DEFAULT_REDELIVER_AFTER_S,
        help="once: seconds without a result before a command is offered again",
    )
    commands.add_argument(
        "--disconnect-after",
        type=float,
        default=DEFAULT_DISCONNECT_AFTER_S,
        help="seconds without a poll before a source shows as disconnected",
    )
    _add_fault_flags(parser.add_argument_group("faults (also switchable at PUT /_emulator/faults)"))
    _add_object_store_flags(parser.add_argument_group("object store (OBS, S3-compatible)"))
    return parser


def _add_object_store_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--obs-port",
        type=int,
        help="serve an object store checking SigV4 with --ak/--sk on this port (0: a free one)",
    )
    group.add_argument(
        "--obs-bucket", action="append", default=[], metavar="NAME", help="a bucket (repeatable)"
    )
    group.add_argument(
        "--obs-deny-bucket",
        action="append",
        default=[],
        metavar="NAME",
        help="a bucket that refuses with 403 AccessDenied (repeatable)",
    )
    group.add_argument(
        "--obs-region", default=DEFAULT_REGION, help="the region signatures must be scoped to"
    )


def object_store_options(args: argparse.Namespace) -> Optional[ObjectStoreOptions]:
    """The object store's options, or None when --obs-port is not given."""
    buckets, denied = bucket_names(args.obs_bucket), bucket_names(args.obs_deny_bucket)
    if args.obs_port is None:
        if buckets or denied:
            raise UsageError("--obs-bucket and --obs-deny-bucket need --obs-port")
        return None
    if not 0 <= args.obs_port <= 65535:
        raise UsageError("--obs-port must be 0 to 65535")
    both = sorted(set(buckets) & set(denied))
    if both:
        raise UsageError(f"bucket {both[0]} is given as --obs-bucket and --obs-deny-bucket")
    if not args.obs_region.strip():
        raise UsageError("--obs-region must not be empty")
    return ObjectStoreOptions(
        port=args.obs_port,
        region=args.obs_region.strip(),
        buckets=buckets,
        denied_buckets=denied,
    )


def _add_fault_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--latency", type=float, help="seconds added to every SMS answer")
    group.add_argument("--error-rate", type=float, help="share (0..1) of requests answered 5xx")
    group.add_argument("--error-status", type=int, help="500 or 503 (default 503)")
    group.add_argument("--retry-after", type=int, help="Retry-After seconds on injected errors")
    group.add_argument("--reset-rate", type=float, help="share of connections reset")
    group.add_argument("--malformed-rate", type=float, help="share of answers with broken JSON")
    group.add_argument(
        "--expire-tokens", action="store_true", default=None, help="refuse tokens issued so far"
    )
    group.add_argument("--fault-path", help="inject faults only on paths matching this regex")
    group.add_argument("--max-faults", type=int, help="stop injecting after this many faults")
    group.add_argument("--seed", type=int, help="seed of the fault generator (reproducible runs)")


def fault_settings(args: argparse.Namespace) -> FaultSettings:
    """The start-up faults from the flags given."""
    given = {field: getattr(args, field_dest(flag)) for field, flag in FAULT_FLAGS.items()}
    try:
        return FaultSettings(
            **{field: value for field, value in given.items() if value is not None}
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        flag = FAULT_FLAGS.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else ""
        raise UsageError(f"invalid {flag}: {first['msg']}") from exc


def field_dest(flag: str) -> str:
    """`--error-rate` -> `error_rate`, the attribute argparse stores it under."""
    return flag.lstrip("-").replace("-", "_")


def options_from(args: argparse.Namespace) -> EmulatorOptions:
    """Check the flags together and build the emulator's options."""
    if not args.ak or not args.sk:
        raise UsageError("--ak and --sk must not be empty")
    iam_parts = (args.iam_user, args.iam_password, args.iam_domain)
    if any(iam_parts) and not all(iam_parts):
        raise UsageError("--iam-user, --iam-password and --iam-domain go together")
    for flag, value in (
        ("--redeliver-after", args.redeliver_after),
        ("--disconnect-after", args.disconnect_after),
        ("--token-ttl", args.token_ttl),
    ):
        if value <= 0:
            raise UsageError(f"{flag} must be more than 0 seconds")
    if args.max_body_bytes <= 0:
        raise UsageError("--max-body-bytes must be more than 0")
    user = IamUser(args.iam_user, args.iam_password, args.iam_domain) if all(iam_parts) else None
    return EmulatorOptions(
        ak=args.ak,
        sk=args.sk,
        token=args.token,
        iam_user=user,
        token_ttl_s=args.token_ttl,
        command_delivery=DeliveryMode(args.command_delivery),
        redeliver_after_s=args.redeliver_after,
        disconnect_after_s=args.disconnect_after,
        state_file=args.state,
        faults=fault_settings(args),
        seed=args.seed,
        max_body_bytes=args.max_body_bytes,
        object_store=object_store_options(args),
    )


def ssl_context_from(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """A server TLS context when --tls-cert and --tls-key are given, else None."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise UsageError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(args.tls_cert), str(args.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --tls-cert/--tls-key: {exc}") from None
    return context


async def _run(
    options: EmulatorOptions, args: argparse.Namespace, tls: Optional[ssl.SSLContext]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        emulator = Emulator(options)
        await serve(emulator, host=args.bind, port=args.port, ssl_context=tls, stop=stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str]) -> int:
    """Run the emulator until SIGTERM/SIGINT; 2 for a bad flag, 3 when it cannot start."""
    args = build_parser().parse_args(list(argv))
    try:
        options = options_from(args)
        tls = ssl_context_from(args)
    except UsageError as exc:
        print(f"smsagent emulator: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_run(options, args, tls))
    except sqlite3.Error as exc:
        print(f"smsagent emulator: cannot open --state {args.state}: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except OSError as exc:
        print(
            f"smsagent emulator: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr
        )
        return EXIT_STARTUP
    return EXIT_OK
