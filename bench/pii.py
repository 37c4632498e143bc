"""PII redaction on planted sets: recall on true PII in varied prose, precision over every
redaction made, with the look-alikes (section numbers, versions, OIDs, headings, dates, prices,
ISBNs, coordinates) that a syntax-only redactor takes for addresses and phone numbers.

    .venv/bin/python bench/pii.py

The sets are tests/pii_planted.py's (seeded); tests/unit/test_clean.py asserts the goals
(recall >= 0.95, precision >= 0.98). Prints the figures and writes bench/results-pii.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tasks.pii import PIIConfig, redact  # noqa: E402
from tests.pii_planted import score  # noqa: E402


def main() -> dict:
    started = time.perf_counter()
    result = score(lambda text: redact(text, PIIConfig())[0])
    result["seconds"] = round(time.perf_counter() - started, 2)
    summary = {k: v for k, v in result.items() if k not in ("missed", "wrong")}
    print(json.dumps(summary, indent=1))
    for label in ("missed", "wrong"):
        for text in result[label][:10]:
            print(f"{label}: {text}")
    (HERE / "results-pii.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
