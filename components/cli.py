"""What the command-line tools in ``scripts/`` share: every user mistake is exit 2 and one line
per problem on stderr (never a traceback, never argparse's usage block)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import NoReturn

USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as ``prog: error: ... (see --help)``: one line."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(USER_ERROR)


def fail(problems: Iterable[str]) -> int:
    """Print each problem on its own line; the exit status for a user mistake."""
    for problem in problems:
        print(" ".join(problem.split("\n")), file=sys.stderr)
    return USER_ERROR
