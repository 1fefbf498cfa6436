"""Sum Nsight Compute's per-instruction warp-stall samples (the source page as CSV, SASS view) by opcode
and by stall reason, and list the instructions with the most samples.

    ncu --import X.ncu-rep --page source --csv --print-source sass > src.csv
    python3 tools/sass_stalls.py src.csv [--top 25]
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter


def number(text: str) -> float:
    try:
        return float(text.replace(",", "").replace("%", ""))
    except ValueError:
        return 0.0


def rows_of(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        lines = [row for row in csv.reader(f)]
    for i, row in enumerate(lines):  # ncu may print banner lines before the header
        if any(c.strip() == "Source" for c in row):
            return [c.strip() for c in row], lines[i + 1:]
    sys.exit(f"{path}: no header with a 'Source' column")


def opcode(source: str) -> str:
    text = re.sub(r"^@!?U?P\w+\s+", "", source.strip())
    return text.split(" ")[0] if text else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    header, rows = rows_of(args.csv)
    src = header.index("Source")
    sample_cols = [i for i, h in enumerate(header) if "Sampling" in h and "All" in h] or \
                  [i for i, h in enumerate(header) if "Sampl" in h]
    if not sample_cols:
        sys.exit(f"no stall-sampling column in {header}")
    total_col = sample_cols[0]
    reason_cols = [i for i, h in enumerate(header) if h.startswith("stall_") or "issue_stalled" in h]
    by_op, reasons, per_inst = Counter(), Counter(), []
    for row in rows:
        if len(row) <= max(src, total_col):
            continue
        n = number(row[total_col])
        by_op[opcode(row[src])] += n
        for i in reason_cols:
            if i < len(row):
                reasons[header[i]] += number(row[i])
        per_inst.append((n, row[0], row[src].strip()))
    total = sum(by_op.values()) or 1.0
    print(f"{header[total_col]}: {total:.0f} samples, {len(per_inst)} instructions")
    print("by opcode: " + ", ".join(f"{op} {100 * n / total:.1f}%" for op, n in by_op.most_common(args.top)))
    if reasons:
        rsum = sum(reasons.values()) or 1.0
        print("by reason: " + ", ".join(f"{r} {100 * n / rsum:.1f}%" for r, n in reasons.most_common(14)))
    print("top instructions:")
    for n, addr, text in sorted(per_inst, reverse=True)[: args.top]:
        print(f"  {100 * n / total:5.1f}%  {addr:>8}  {text[:90]}")


if __name__ == "__main__":
    main()
