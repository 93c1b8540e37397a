"""Stitch the per-benchmark sections in benchmarks/results/ into RESULTS.md."""

from __future__ import annotations

import os

from _common import HERE, RESULTS_DIR

ORDER = ["embed_throughput", "scoring_throughput", "index", "match", "clipcleaner", "detection", "temperature", "training", "training_seeds", "flickr8k", "memory"]


def main() -> None:
    sections = sorted(RESULTS_DIR.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
    text = "# nclean benchmark results\n\n"
    text += "Every figure below was written by the benchmark run named in its section header; nothing is edited by hand.\n\n"
    for path in sections:
        text += path.read_text() + "\n"
    out = HERE / "RESULTS.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print(f"wrote {out} ({len(sections)} sections)")


if __name__ == "__main__":
    main()
