"""
The project's line limit: no line of any *.py in the repository over 120 characters. Lists each offender as
file:line and exits 1; .ci/run calls it before pytest.

    python tests/check_lines.py
"""
import sys
from pathlib import Path

LIMIT = 120
ROOT = Path(__file__).resolve().parents[1]


def long_lines(root=ROOT, limit=LIMIT):
    """-> ["path:line: N characters", ...] for every line of a *.py under root (hidden folders skipped)."""
    out = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if len(line) > limit:
                out.append(f"{rel}:{i}: {len(line)} characters")
    return out


if __name__ == "__main__":
    bad = long_lines()
    if bad:
        print("\n".join(bad) + f"\n{len(bad)} lines over {LIMIT} characters", file=sys.stderr)
    sys.exit(1 if bad else 0)
