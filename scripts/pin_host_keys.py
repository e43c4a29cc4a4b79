#!/usr/bin/env python3
"""Pin the SSH host keys of a stack's nodes (nodes[].sshHostPublicKey) in its stack file.

The program sends nothing to a node whose host key is not pinned. This reads the key each node
presents (ssh-keyscan), prints its fingerprint for you to compare with the one the node itself
shows, run on its console (not over the network you are checking):

    ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub

and, once you confirm, writes the keys into the stack file (comments and layout kept).

    python scripts/pin_host_keys.py --stack dev                 # asks before writing
    python scripts/pin_host_keys.py --stack dev --yes           # for scripts: no question
    python scripts/pin_host_keys.py --stack dev --repin k8s-dev-worker-1   # a reinstalled node
    python scripts/pin_host_keys.py --stack prod --vm           # upgrade: the VM's current key
    python scripts/pin_host_keys.py --stack edge --vm           # an existing cache host (host:)

Already pinned nodes are checked: `ok`, or `MISMATCH` (exit 1, nothing written for that node
unless it is named with --repin). `--vm` pins vm.sshHostPublicKey: only for a registry VM made
before the program generated its own host key (README "Trust model": upgrading); with a `host:`
section (an existing cache host) it pins host.sshHostPublicKey, the host's own key. Exit 0 when
every host is pinned and matches, 1 when one does not answer or does not match, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.cli import Parser, fail  # noqa: E402
from components.host_key_pins import (  # noqa: E402
    report_line,
    scan,
    targets,
    to_write,
    write_pins,
)
from components.settings import key_text  # noqa: E402
from components.stack_file import StackFileError, load_stack_settings, stack_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", help="stack name: stacks/Pulumi.<stack>.yaml")
    source.add_argument("--stack-file", type=Path, help="path of a stack config file")
    parser.add_argument("--yes", action="store_true", help="write without asking")
    parser.add_argument(
        "--repin", action="append", default=[], metavar="NODE",
        help="replace this node's pinned key with the one it presents now (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--vm", action="store_true",
        help="also pin the cache host's key: vm.sshHostPublicKey (a VM made before the program"
        " generated its key) or host.sshHostPublicKey (an existing cache host)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per host")
    args = parser.parse_args(argv)

    path = args.stack_file or stack_path(args.stack)
    try:
        settings = load_stack_settings(path)
    except StackFileError as error:
        return fail(error.problems)
    hosts = targets(settings, args.vm)
    names = {host.name for host in hosts}
    unknown = [name for name in args.repin if name not in names]
    if unknown:
        return fail(f"--repin {key_text(name)}: no such node in {path}" for name in unknown)

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(hosts)))) as pool:
        results = list(pool.map(lambda host: scan(host, args.timeout), hosts))
    for result in results:
        print(report_line(result))
    pins = to_write(results, set(args.repin))
    left = [r for r in results if r not in pins and r.status in ("unreachable", "MISMATCH", "new")]
    if pins:
        print(
            f"\nCompare each fingerprint above with the host's own "
            f"(on its console: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub).\n"
            f"{len(pins)} key(s) to pin in {path}: {', '.join(p.target.name for p in pins)}"
        )
        if not args.yes and not _confirmed():
            print("nothing was written", file=sys.stderr)
            return 1
        try:
            write_pins(path, pins)
        except (StackFileError, ValueError, OSError) as error:
            lines = error.problems if isinstance(error, StackFileError) else [str(error)]
            return fail([f"{path}: not written: {line}" for line in lines])
        print(f"pinned {len(pins)} key(s) in {path}")
    for result in left:
        target = result.target
        if result.status == "MISMATCH":
            print(
                f"{target.name}: presents another key than its pinned {target.key_path}: if it "
                f"was reinstalled, compare its key on its console, then --repin {target.name}",
                file=sys.stderr,
            )
        else:
            print(f"{target.name}: not pinned: {result.error}", file=sys.stderr)
    return 1 if left else 0


def _confirmed() -> bool:
    try:
        answer = input("Pin them? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


if __name__ == "__main__":
    sys.exit(main())
