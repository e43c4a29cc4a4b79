#!/usr/bin/env python3
"""Render, offline and without the Pulumi CLI, every file the program will put anywhere.

    python scripts/render.py --stack dev --out DIR
    python scripts/render.py --stack-file stacks/Pulumi.prod.yaml --out DIR

Same settings model and renderers as ``pulumi up``. Bad settings: exit 2, one line per problem
on stderr, nothing written. Secrets in the stack file (``secure:``) are never decrypted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from components.renderers.bundle import render_bundle  # noqa: E402
from components.settings import SettingsError, load_settings  # noqa: E402
from components.stack_file import stack_path, stack_values  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stack", help="stack name: reads stacks/Pulumi.<stack>.yaml")
    source.add_argument("--stack-file", type=Path, help="path of a stack config file")
    parser.add_argument("--out", type=Path, required=True, help="directory to write into")
    args = parser.parse_args(argv)

    stack_file = args.stack_file or stack_path(args.stack)
    try:
        raw = stack_values(stack_file)
    except (OSError, yaml.YAMLError) as error:
        print(f"{stack_file}: cannot read stack config: {error}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(raw)
    except SettingsError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2

    files = render_bundle(settings)  # everything in memory first: nothing half-written
    for relative, text in sorted(files.items()):
        path = args.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if relative.endswith(".sh"):
            path.chmod(0o755)
    print(f"wrote {len(files)} files to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
