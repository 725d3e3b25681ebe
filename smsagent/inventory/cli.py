"""`smsagent inventory`: print the registration body (or the disk-info body) of this server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Union

from smsagent import log as logging_setup
from smsagent.api.models import PostSourceServerBody, PutDiskInfoReq
from smsagent.inventory.builder import (
    InventoryOptions,
    build_disk_info,
    build_registration_body,
    layout_fingerprint,
)

EXIT_OK = 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsagent inventory",
        description="Print what the agent reports to SMS about this server, as JSON.",
    )
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")
    parser.add_argument("--name", help="the name to register under (default: the host name)")
    parser.add_argument(
        "--disk-info",
        action="store_true",
        help="print the body of the disk-info update (PUT /v3/sources/{id}/diskinfo) instead",
    )
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="print only the layout fingerprint that decides when disk info is re-sent",
    )
    parser.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="KNAME",
        help="also report this block device as a disk, e.g. loop0 (repeatable)",
    )
    parser.add_argument(
        "--root", default="/", help="mount point of the server's root file system (default: /)"
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log lines on standard error (default: warning)",
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Collect, print one JSON document on standard output, return the exit code."""
    args = _parser().parse_args(list(argv))
    logging_setup.configure("console", args.log_level, stream=sys.stderr)
    options = InventoryOptions(extra_disks=tuple(args.disk), root_mount_point=args.root)
    body: Union[PostSourceServerBody, PutDiskInfoReq]
    if args.disk_info or args.fingerprint:
        body = build_disk_info(options=options)
    else:
        body = build_registration_body(args.name, options=options)
    if args.fingerprint:
        print(layout_fingerprint(body))
        return EXIT_OK
    print(json.dumps(body.to_wire(), indent=2 if args.pretty else None, ensure_ascii=False))
    return EXIT_OK
