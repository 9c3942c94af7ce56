"""Run the hostile cases of issue 12 (tests/hostile/) and print the closing counts: cases tried, CLI runs, clear
errors, tracebacks, inputs modified, outputs replaced unasked. The counts come from the checks the tests make
(each CLI run and each digest comparison is recorded by tests/hostile/conftest.py), not from a list written here.

    python bench/hostile_counts.py            # all hostile cases (~3 min on 2 busy cores)
    python bench/hostile_counts.py -k merge   # extra pytest arguments are passed on
    PYTHONPATH=/path/to/other/checkout python bench/hostile_counts.py   # the same cases against other code
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        record, junit = Path(tmp) / "record.json", Path(tmp) / "junit.xml"
        env = dict(os.environ, SPEAR_HOSTILE_REPORT=str(record), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
               f"--rootdir={ROOT}", "-c", str(ROOT / "pyproject.toml"), str(ROOT / "tests" / "hostile"), *extra]  # fmt: skip
        # run outside the checkout, so the spear_mm under test is the one on PYTHONPATH / installed, not the cwd
        subprocess.run(cmd, cwd=tmp, env=env, check=False)
        entries = json.loads(record.read_text()) if record.exists() else []
        outcome = Counter()
        for case in ET.parse(junit).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            outcome["skipped" if "skipped" in kinds else "failed" if kinds & {"failure", "error"} else "passed"] += 1
    runs = [e for e in entries if e["kind"] == "run"]
    counts = {
        "cases tried": outcome["passed"] + outcome["failed"],
        "cases passed": outcome["passed"],
        "cases failed": outcome["failed"],
        "cases skipped": outcome["skipped"],
        "in-process CLI runs": len(runs),
        "clear errors (exit 2, one paragraph)": sum(e["rc"] == 2 and not e["traceback"] for e in runs),
        "tracebacks": sum(bool(e["traceback"]) for e in runs),
        "inputs modified": sum(e["changed"] for e in entries if e["kind"] == "inputs"),
        "input checks": sum(e["kind"] == "inputs" for e in entries),
        "outputs replaced unasked": sum(e["changed"] for e in entries if e["kind"] == "outputs"),
        "output checks": sum(e["kind"] == "outputs" for e in entries),
    }
    width = max(map(len, counts))
    for key, value in counts.items():
        print(f"{key:<{width}}  {value}")
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
