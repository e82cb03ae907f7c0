"""Sequence classification (labels, text pairs) over a Parquet corpus on Ray Data.

    python jobs/classify_corpus.py --input URI --output URI --model FOLDER [--text-pair-column C] [--top-k K]
        [--all-labels] [--function-to-apply default|softmax|sigmoid|none] [--window-aggregation mean|max|first]

Every flag can also come from `--config job.yaml`; flags win. See `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/classify_corpus.py` from a checkout, without installing
    sys.path.insert(0, str(REPO))

from pipeline.classify_task import CLASSIFY_TASK  # noqa: E402
from pipeline.config import ClassifyConfig  # noqa: E402
from pipeline.entry import job_main  # noqa: E402


def main(argv: list[str]) -> int:
    job_main(argv, "classify_corpus.py", __doc__.splitlines()[0], ClassifyConfig, lambda config: (config, CLASSIFY_TASK))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
