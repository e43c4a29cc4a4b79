"""One closing line for several pytest runs: ``N passed, N failed, N skipped``.

scripts/test.sh runs the VM tier beside the other tests; CI reads one plain closing line.
Errors (a fixture that failed) count as failed; a log without a summary counts as one failure
(that pytest did not finish).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# "==== 3 passed, 1 skipped in 2.01s ====", or without the rules under -q.
SUMMARY = re.compile(
    r"^=*\s*(?P<counts>(?:\d+ \w+|no tests ran)(?:, \d+ \w+)*) in [\d.]+s(?: \([^)]*\))?\s*=*$"
)
COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def totals(logs: list[Path]) -> dict[str, int]:
    result = {"passed": 0, "failed": 0, "skipped": 0}
    for log in logs:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        summary = next((m for line in reversed(lines) if (m := SUMMARY.match(line))), None)
        if summary is None:
            if not any("no tests ran" in line for line in lines):
                result["failed"] += 1
            continue
        for number, kind in COUNT.findall(summary.group("counts")):
            key = {"error": "failed", "errors": "failed", "xpassed": "passed"}.get(kind, kind)
            if key in result:
                result[key] += int(number)
    return result


def main(argv: list[str]) -> int:
    counts = totals([Path(arg) for arg in argv])
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
