"""Several tasks (NER, classification, QA, embeddings) in one read and one write of a Parquet corpus.

    python jobs/multi_corpus.py --config examples/multi.yaml [--input URI] [--output URI] [--overwrite]

The YAML holds the shared options and `tasks`: result column -> {task, model, its options}; each
task's results are one struct column. Flags override the shared options. See docs/internals.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/multi_corpus.py` from a checkout, without installing
    sys.path.insert(0, str(REPO))

from pipeline.config import MultiConfig  # noqa: E402
from pipeline.entry import job_main  # noqa: E402
from pipeline.multi_task import multi_task  # noqa: E402


def main(argv: list[str]) -> int:
    job_main(argv, "multi_corpus.py", __doc__.splitlines()[0], MultiConfig, multi_task)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
