"""A progress line every `--progress-seconds` while a run executes, read from the output's ledger.

    bertbatch ner: 41,200 of 1,000,000 rows done (4.1%); this run 31,200 in 6m02s, 12 errors; 86 rows/s,
    10,112 tokens/s; about 3h05m left

It counts what is committed, what a restart would keep, not what is in flight, so it moves once per
write (up to `--rows-per-file` rows). Each line costs one listing of `_progress/` and one small read
per entry not read before, on an object store too. Where stdout is no terminal (a `ray job submit`
log, an Airflow task log) these lines replace Ray Data's own progress log: a snapshot of every
operator, about 17 lines every 10 s.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import fsspec

from pipeline import ledger
from pipeline.cli import one_line_reason


class ProgressLog:
    """Prints `line()` every `every` seconds on a thread of its own while the `with` block runs (0: never)."""

    def __init__(self, task: str, output: str, run: int, input_rows: int, done_before: int, every: float,
                 rows_per_write: int | None = None):
        self.task, self.output, self.run, self.every = task, output, run, every
        self.input_rows, self.done_before, self.rows_per_write = input_rows, done_before, rows_per_write
        self.rows = self.errors = self.tokens = 0     # this run's committed entries
        self._read: set[str] = set()
        self._started = time.monotonic()
        self._first: tuple[float, int, int] | None = None   # when the first commit was seen: time, rows, tokens
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fs = None

    def __enter__(self) -> ProgressLog:
        self._started = time.monotonic()
        if self.every > 0:
            self._thread = threading.Thread(target=self._loop, name="bertbatch-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)   # at most one listing in progress

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.read()
            except Exception as error:   # a storage fault: this line says so, the next one reads again
                print(f"bertbatch {self.task}: progress not read ({one_line_reason(error)})", file=sys.stderr,
                      flush=True)
                continue
            if not self._stop.is_set():
                print(self.line(), flush=True)

    def read(self) -> None:
        """Add this run's entries committed since the last read. A filesystem instance of its own: the job's
        threads share theirs, and an SFTP session is not safe across threads (`storage.thread_safe`)."""
        if self._fs is None:
            self._fs = fsspec.core.url_to_fs(self.output, skip_instance_cache=True)
        fs, root = self._fs
        folder = f"{root.rstrip('/')}/{ledger.PROGRESS_DIR}"
        fs.invalidate_cache(folder)
        if not fs.exists(folder):
            return
        for path in ledger.entry_paths(fs, folder):
            if path in self._read:
                continue
            with contextlib.suppress(FileNotFoundError):   # deleted meanwhile (an orphan's entry, by `recover`)
                entry = ledger.parse_entry(fs.cat_file(path))
                if entry is None:   # written in place and not whole yet (SFTP, HDFS): read again next time
                    continue
                self._read.add(path)
                if entry.get("run") == self.run:   # earlier runs' rows are in `done_before`
                    counters = entry.get("counters", {})
                    self.rows += counters.get("rows", 0) + counters.get("errors", 0)
                    self.errors += counters.get("errors", 0)
                    self.tokens += counters.get("tokens", 0)

    def line(self, now: float | None = None) -> str:
        """The rate (and time left) counts from the first commit this log saw: not the start-up before it."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._started
        done = self.done_before + self.rows
        share = f" ({done / self.input_rows:.1%})" if self.input_rows else ""
        head = f"bertbatch {self.task}: {done:,} of {self.input_rows:,} rows done{share}"
        if not self.rows:
            per_write = f" (a write commits up to {self.rows_per_write:,} rows)" if self.rows_per_write else ""
            return f"{head}; {duration(elapsed)} into this run, nothing committed yet{per_write}"
        if self._first is None:
            self._first = (now, self.rows, self.tokens)
        text = f"{head}; this run {self.rows:,} in {duration(elapsed)}, {self.errors:,} errors"
        since, rows, tokens = self._first
        if self.rows == rows or now <= since:
            return text
        rate = (self.rows - rows) / (now - since)
        left = max(self.input_rows - done, 0) / rate
        return (f"{text}; {rate:,.0f} rows/s, {(self.tokens - tokens) / (now - since):,.0f} tokens/s; "
                f"about {duration(left)} left")


def duration(seconds: float) -> str:
    """45s, 6m02s, 3h05m."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
