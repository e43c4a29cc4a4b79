#!/usr/bin/env python3
"""Render, offline and without the Pulumi CLI, every file the program will put anywhere.

    python scripts/render.py --stack dev --out DIR
    python scripts/render.py --stack-file stacks/Pulumi.prod.yaml --out DIR

Same settings model and renderers as ``pulumi up``, and the same checks of the stack file
(unknown namespaces and keys, secrets in plain text, duplicate keys). Any problem: exit 2, one
line per problem on stderr, nothing written. Files are written all or nothing (each into a temp
file beside it, then renamed); files already in DIR that the bundle does not name are left alone.
Secrets in the stack file (``secure:``) are never decrypted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.atomic_files import AtomicFiles, WriteFailed  # noqa: E402
from components.cli import Parser, fail  # noqa: E402
from components.renderers.bundle import render_bundle  # noqa: E402
from components.stack_file import StackFileError, load_stack_settings, stack_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", help="stack name: reads stacks/Pulumi.<stack>.yaml")
    source.add_argument("--stack-file", type=Path, help="path of a stack config file")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)

    try:
        settings = load_stack_settings(args.stack_file or stack_path(args.stack))
    except StackFileError as error:
        return fail(error.problems)

    files = render_bundle(settings)  # everything in memory first
    bundle = AtomicFiles()
    for relative, text in sorted(files.items()):
        bundle.add(args.out / relative, text.encode(), 0o755 if relative.endswith(".sh") else 0o644)
    if args.out.exists() and not args.out.is_dir():
        return fail([f"{args.out}: exists and is not a directory (--out needs a directory)"])
    try:
        problems = bundle.problems()
        if problems:
            return fail(problems)
        bundle.write()
    except WriteFailed as error:
        return fail([str(error)])
    print(f"wrote {len(files)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
