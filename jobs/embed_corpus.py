"""Sentence embeddings over a Parquet corpus on Ray Data.

    python jobs/embed_corpus.py --input URI --output URI --model FOLDER [--pooling cls|mean|max]
        [--normalize | --no-normalize] [--long-text truncate|mean] [--embedding-dtype float32|float16]

Every flag can also come from `--config job.yaml`; flags win. See `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/embed_corpus.py` from a checkout, without installing
    sys.path.insert(0, str(REPO))

from pipeline.config import EmbedConfig  # noqa: E402
from pipeline.embed_task import EMBED_TASK  # noqa: E402
from pipeline.entry import job_main  # noqa: E402


def main(argv: list[str]) -> int:
    job_main(argv, "embed_corpus.py", __doc__.splitlines()[0], EmbedConfig, lambda config: (config, EMBED_TASK))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
