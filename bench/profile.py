"""Summarise py-spy's collapsed stacks (`bench/run.py --profile DIR`): where a server's samples go.

    .venv/bin/python bench/profile.py DIR/03-uvicorn-personal-notifier.txt [--top 25]

Prints the functions with the most samples on the stack (inclusive) and at its top (self),
each as a share of all samples, so a profile can be quoted in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`send (asyncio/streams.py:123)` -> `send (asyncio/streams.py)`: lines are merged per function."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    return total, inclusive, own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, inclusive, own = summarise(args.stacks)
    print(f"{args.stacks.name}: {total} samples")
    for title, counts in (("on the stack", inclusive), ("at the top", own)):
        print(f"\n{title}:")
        for name, count in counts.most_common(args.top):
            print(f"  {100 * count / max(total, 1):5.1f}%  {name}")


if __name__ == "__main__":
    main()
