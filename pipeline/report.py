"""The end-of-run report: counts and speeds summed from what every write returned.

Per stage, `busy_seconds` is the time its actors spent on batches, summed over actors, so
`tokens_per_busy_second` is one actor's speed; the overall docs/s and tokens/s use wall time.
"""

from __future__ import annotations

from collections.abc import Iterable

STAGES = ("tokenize", "infer", "decode")


def summarize(write_results: Iterable[dict], input_rows: int, wall_seconds: float) -> dict:
    totals: dict[str, float] = {}
    files = 0
    for result in write_results:
        files += len(result.get("files", ()))
        for key, value in result.items():
            if key != "files":
                totals[key] = totals.get(key, 0) + (value or 0)
    tokens, padded = int(totals.get("tokens", 0)), int(totals.get("padded_tokens", 0))
    documents = int(totals.get("rows", 0)) + int(totals.get("errors", 0))
    wall = max(wall_seconds, 1e-9)
    stages = {}
    for stage in STAGES:
        busy = float(totals.get(f"seconds_{stage}", 0.0))
        stages[stage] = {
            "busy_seconds": round(busy, 3),
            "docs_per_busy_second": round(documents / busy, 1) if busy else None,
            "tokens_per_busy_second": round(tokens / busy, 1) if busy else None,
        }
    return {
        "input_rows": input_rows,
        "documents": documents,
        "results": int(totals.get("rows", 0)),
        "errors": int(totals.get("errors", 0)),
        "unreadable_rows": int(totals.get("unreadable_rows", 0)),
        "files": files,
        "windows": int(totals.get("windows", 0)),
        "real_tokens": tokens,
        "padded_tokens": padded,
        "padding_efficiency": round(tokens / padded, 4) if padded else None,
        "wall_seconds": round(wall_seconds, 3),
        "docs_per_second": round(documents / wall, 1),
        "tokens_per_second": round(tokens / wall, 1),
        "stages": stages,
    }


def format_report(report: dict) -> str:
    efficiency = report["padding_efficiency"]
    lines = [
        f"documents    {report['documents']} of {report['input_rows']} input rows: "
        f"{report['results']} results, {report['errors']} errors, {report['files']} files",
        f"windows      {report['windows']}",
        f"tokens       {report['real_tokens']} real, {report['padded_tokens']} padded"
        + (f" (padding efficiency {efficiency:.1%})" if efficiency is not None else ""),
        f"speed        {report['docs_per_second']} docs/s, {report['tokens_per_second']} tokens/s "
        f"over {report['wall_seconds']} s wall",
    ]
    for stage, numbers in report["stages"].items():
        if numbers["busy_seconds"]:
            lines.append(f"  {stage:<10} {numbers['busy_seconds']} busy s, {numbers['docs_per_busy_second']} docs/s, "
                         f"{numbers['tokens_per_busy_second']} tokens/s per actor")
    return "\n".join(lines)
