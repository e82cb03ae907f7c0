"""Extractive question answering over a Parquet corpus on Ray Data (the text column is the context).

    python jobs/qa_corpus.py --input URI --output URI --model FOLDER (--question TEXT | --question-column C)
        [--top-k K] [--max-answer-len N] [--doc-stride N] [--handle-impossible-answer]

Every flag can also come from `--config job.yaml`; flags win. See `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/qa_corpus.py` from a checkout, without installing
    sys.path.insert(0, str(REPO))

from pipeline.config import QaConfig  # noqa: E402
from pipeline.entry import job_main  # noqa: E402
from pipeline.qa_task import QA_TASK  # noqa: E402


def main(argv: list[str]) -> int:
    job_main(argv, "qa_corpus.py", __doc__.splitlines()[0], QaConfig, lambda config: (config, QA_TASK))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
