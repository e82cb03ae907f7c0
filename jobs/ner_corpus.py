"""Named-entity recognition over a Parquet corpus on Ray Data.

    python jobs/ner_corpus.py --input URI --output URI --model FOLDER [--aggregation simple] ...
    python jobs/ner_corpus.py            # the demo: bundled sample corpus and demo model

Every flag can also come from `--config job.yaml`; flags win. See `--help`.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python jobs/ner_corpus.py` from a checkout, without installing
    sys.path.insert(0, str(REPO))

from pipeline.cli import UsageError, fail, one_line_reason, parse_config  # noqa: E402
from pipeline.config import NerConfig  # noqa: E402
from pipeline.job import run_job  # noqa: E402
from pipeline.ner_task import NER_TASK  # noqa: E402

PROG = "ner_corpus.py"
DEMO = ["--input", str(REPO / "examples/sample_corpus"), "--model", str(REPO / "examples/demo-ner-model"),
        "--output", "out/demo-ner", "--overwrite"]


def main(argv: list[str]) -> int:
    demo = not argv
    try:
        config = parse_config(NerConfig, DEMO if demo else argv, PROG, __doc__.splitlines()[0])
        run = run_job(config, NER_TASK)
    except (UsageError, FileExistsError) as error:
        fail(PROG, str(error))
    except Exception as error:  # noqa: BLE001 - infrastructure failure: traceback above, one-line reason last
        traceback.print_exc()
        fail(PROG, one_line_reason(error), status=1)
    if not run["complete"]:
        report = run["report"]
        fail(PROG, f"{report['documents']} of {report['input_rows']} input rows reached results or errors; "
                   f"no _SUCCESS written in {config.output}", status=1)
    if demo:
        show_examples(config.output)
    print(f"output: {Path(config.output).resolve()}")
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

