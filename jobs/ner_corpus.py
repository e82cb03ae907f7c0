"""Named-entity recognition over a Parquet corpus on Ray Data.

    python jobs/ner_corpus.py --input URI --output URI --model FOLDER [--aggregation simple] ...
    python jobs/ner_corpus.py            # the demo: bundled sample corpus and demo model

Every flag can also come from `--config job.yaml`; flags win. See `--help`.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/ner_corpus.py` from a checkout, without installing
    sys.path.insert(0, str(REPO))

from pipeline.config import NerConfig  # noqa: E402
from pipeline.entry import job_main  # noqa: E402
from pipeline.ner_task import NER_TASK  # noqa: E402

PROG = "ner_corpus.py"
DEMO = ["--input", str(REPO / "examples/sample_corpus"), "--model", str(REPO / "examples/demo-ner-model"),
        "--output", "out/demo-ner", "--overwrite"]


def main(argv: list[str]) -> int:
    demo = not argv
    run = job_main(DEMO if demo else argv, PROG, __doc__.splitlines()[0], NerConfig, lambda c: (c, NER_TASK))
    if demo:
        show_examples(run["config"]["output"])
    return 0


def show_examples(output: str, count: int = 8) -> None:
    import pyarrow.dataset as pads

    table = pads.dataset(output, format="parquet").head(200, columns=["entities"])
    print("example entities:" if any(table.column("entities").to_pylist()) else "no entities in the first 200 rows")
    shown = 0
    for entities in table.column("entities").to_pylist():
        for entity in entities:
            if shown == count:
                return
            print(f"  {entity['label']:<6} {entity['text']!r} [{entity['start']}:{entity['end']}] "
                  f"score {entity['score']:.3f}")
            shown += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

