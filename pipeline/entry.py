"""The body every job's `main` shares: parse flags + YAML, run, exit with a one-line reason on failure."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from pydantic import BaseModel

from pipeline.cli import UsageError, fail, one_line_reason, parse_config
from pipeline.lease import OutputBusy
from pipeline.restart import RunFailed

BUSY = 75   # EX_TEMPFAIL: another run holds the output; try again later


def job_main(argv: list[str], prog: str, description: str, config_cls: type[BaseModel],
             to_job: Callable[[BaseModel], tuple]) -> dict:
    """Run the job that `to_job(config)` -> (JobConfig, Task) names; exit 2 on usage errors, 75 when another run
    holds the output, 1 on other failures."""
    from pipeline.job import run_job

    try:
        config = parse_config(config_cls, argv, prog, description)
        job_config, task = to_job(config)
        run = run_job(job_config, task)
    except OutputBusy as error:   # temporary: the other run ends, or its lease expires
        fail(prog, str(error), status=BUSY)
    except (UsageError, FileExistsError) as error:
        fail(prog, str(error))
    except RunFailed as error:   # Ray has printed the workers' errors above
        fail(prog, str(error), status=1)
    except Exception as error:  # noqa: BLE001 - infrastructure failure: traceback above, one-line reason last
        traceback.print_exc()
        fail(prog, one_line_reason(error), status=1)
    if not run["complete"]:
        report = run["report"]
        unreadable = report.get("unreadable_files")
        if unreadable:
            why = f"{len(unreadable)} input file(s) could not be read ({', '.join(unreadable)})"
        elif report.get("unreadable_rows"):
            why = f"{report['unreadable_rows']} input rows could not be decoded (corrupt_data in _errors)"
        else:
            why = f"{report['documents']} of {report['input_rows']} input rows reached results or errors"
        fail(prog, f"{why}; no _SUCCESS written in {job_config.output}", status=1)
    print(f"output: {run['config']['output']}")   # absolute for local outputs
    return run
