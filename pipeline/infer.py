"""Run the encoder + head over all windows of a batch of documents.

Windows are sorted by length (longest first) and cut into micro-batches whose padded size
(rows × longest row) stays under `batch_tokens`; each micro-batch is padded only to its own
longest window, and a long one never pads much shorter ones (see `micro_batches`). Consecutive
micro-batches run together in forward passes of up to `batch_tokens` (`passes`). Outputs go back in
the original order, nested per document: for each window a list of float32 vectors, one per token
(NER, QA) or a single one (classification, embeddings).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.arrow_nested import flat_lengths, flatten, nest, ragged, split_rows
from pipeline.cores import NodeCores
from pipeline.stage import OUTPUTS, STAT_PREFIX, WINDOWS, Stage, Timer, add_seconds, set_column, with_errors

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")   # int8: CPU dynamic quantisation


@dataclasses.dataclass(frozen=True)
class InferConfig:
    model: str
    task: str                       # a task of models.load_model: ner, classify, qa, embed, base
    batch_tokens: int = 16384       # padded tokens per micro-batch (rows × longest row)
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None      # intra-op torch threads for CPU actors (Ray sets OMP_NUM_THREADS=1)
    # CPU actors of one group share a node's `node_threads` among those with a batch (pipeline.cores)
    core_group: str | None = None
    node_threads: int | None = None
    model_options: tuple[tuple[str, object], ...] = ()  # extra load_model keywords (pooling, normalize)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.dtype,)

    def with_auto_as(self, dtype: str) -> InferConfig:
        """This config with `dtype="auto"` replaced by what it resolved to (ray_plan.preflight)."""
        return dataclasses.replace(self, dtype=dtype) if self.dtype == "auto" else self


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ValueError(f"device={device!r}: expected one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available here; use --device auto or cpu")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return getattr(torch, auto_dtype(device))
    if dtype == "int8":     # loaded in fp32, then quantised (models.loading.quantize_int8)
        if device != "cpu":
            raise ValueError("dtype='int8' (dynamic int8 quantisation) runs on CPU only; use bfloat16 on CUDA")
        return torch.float32
    return getattr(torch, dtype)


def strict_float32() -> None:
    """float32 on CUDA computes in float32: cuDNN runs convolutions (ConvBERT's) in TF32 by default."""
    import torch

    # the flags torch has long had (the newer `fp32_precision` ones make reading these fail when mixed)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def auto_dtype(device: str) -> str:
    """What `--dtype auto` is on `device` here ("cpu" or "cuda"). On CPU the driver asks without importing
    torch (≈ 2 s of a 2-core machine's start-up, while Ray's workers start)."""
    if device != "cuda":
        return "float32"
    import torch

    # bf16 units (Ampere and later); torch would also say yes where it only emulates them (T4, V100)
    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"


def slow_on_this_cpu(dtype: str) -> str | None:
    """Why `dtype` would crawl on this machine's CPU, or None. oneDNN runs bf16/fp16 matmuls on AVX-512,
    AMX or Arm's bf16/fp16 units; without them torch falls back to a scalar loop (a 2048² bf16 matmul
    on an AVX2-only EPYC: 60 s, against 0.15 s in fp32)."""
    if dtype not in ("bfloat16", "float16"):
        return None
    if _native_on_cpu(dtype):
        return None
    import torch

    return (f"--dtype {dtype} on CPU: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no {dtype} matrix "
            f"instructions, and torch runs {dtype} 40-400x slower than float32 there; use --dtype float32, or "
            "int8 (dynamic quantisation) for speed")


# CPU flags (Linux /proc/cpuinfo) of bf16/fp16 matrix units: each comes with the AVX-512 oneDNN's own probe asks for.
HALF_UNIT_FLAGS = {"bfloat16": {"avx512_bf16", "amx_bf16"}, "float16": {"avx512_fp16", "amx_fp16"}}


def _native_on_cpu(dtype: str) -> bool:
    """Whether oneDNN runs `dtype` matmuls on units of this CPU. The CPU's flags answer yes without importing torch
    (a bf16 job's driver on 2 cores: ≈ 0.9 s sooner to its first batch, bench/NOTES.md); torch's probe answers
    the rest."""
    if HALF_UNIT_FLAGS[dtype] & cpu_flags():
        return True
    import torch

    from models.layers import half_units

    return half_units(getattr(torch, dtype)) is not False   # where torch cannot tell: nothing to refuse


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this machine's first CPU in /proc/cpuinfo; empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(flags.partition(":")[2].split())


# Padded tokens per forward pass at most on CPU (`passes`): bf16 matmuls on AMX gain little past 2,048 rows,
# and an actor takes an idle one's threads only between passes (pipeline.cores): a pass of 16,384 tokens
# ran 25 s on one thread (BERT-base fp32), and NER jobs went 13-20% slower with passes that large.
CPU_PASS_TOKENS = 2048

# A micro-batch also ends where a window would be padded by more than a fraction of the longest
# (or a few tokens): with a large budget, short windows would otherwise be padded to a long one.
# On CPU every padded token costs as much as a real one and a forward pass costs little, so the
# bound is tight (bench corpus: 86% → 97% real tokens, 39 → 144 passes for 1,000 documents); a
# GPU needs larger passes to be busy. Outputs never depend on it.
PADDING = {"cpu": (0.05, 4), "cuda": (0.25, 16)}     # (fraction of the longest, slack tokens)


def micro_batches(lengths: np.ndarray, batch_tokens: int, padding: tuple[float, int] = PADDING["cuda"]
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(order, groups): `order` sorts windows longest first; each group indexes into `order`.

    A group's padded size len(group) × its first (longest) length stays ≤ batch_tokens (a window
    longer than the budget runs alone), and no member is padded by more than
    max(slack, fraction × longest) tokens, `padding` = (fraction, slack).
    """
    fraction, slack = padding
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    groups, start = [], 0
    while start < len(order):
        longest = max(int(sorted_lengths[start]), 1)
        rows = max(1, batch_tokens // longest)
        shortest_allowed = longest - max(slack, fraction * longest)
        end = min(start + rows, len(order))
        too_short = np.flatnonzero(sorted_lengths[start:end] < shortest_allowed)
        end = start + int(too_short[0]) if len(too_short) else end
        groups.append(np.arange(start, end))
        start = end
    return order, groups


def passes(batches: list[np.ndarray], lengths: np.ndarray, batch_tokens: int) -> list[list[np.ndarray]]:
    """Consecutive micro-batches joined into forward passes of at most `batch_tokens` padded tokens (a micro-batch
    over the budget goes alone): the linear layers see all of a pass's tokens at once (`Encoder.forward_batches`)."""
    out: list[list[np.ndarray]] = []
    tokens = batch_tokens
    for members in batches:
        size = padded_tokens(members, lengths)
        if tokens + size > batch_tokens:
            out.append([])
            tokens = 0
        out[-1].append(members)
        tokens += size
    return out


def padded_tokens(members: np.ndarray, lengths: np.ndarray) -> int:
    """A micro-batch's size: its windows (longest first) × the longest."""
    return len(members) * int(lengths[members[0]])


class Infer(Stage):
    name = "infer"
    requires = (WINDOWS,)
    adds = (OUTPUTS, f"{STAT_PREFIX}padded_tokens")

    def __init__(self, config: InferConfig):
        from models import load_model
        from models.loading import quantize_int8
        from models.remote import local_model_folder

        self.config = config
        self.device = resolve_device(config.device)
        self.cores = NodeCores(config.core_group, config.threads, config.node_threads) \
            if config.core_group and config.threads and config.node_threads and self.device == "cpu" else None
        self._set_threads()
        if self.device == "cpu" and (why := slow_on_this_cpu(config.dtype)):
            logging.getLogger(__name__).warning(why)   # a node unlike the driver's (the driver refuses on its own)

        if self.device == "cuda" and config.dtype == "float32":
            strict_float32()
        self.model = load_model(local_model_folder(config.model), config.task, dtype=resolve_dtype(config.dtype, self.device),
                                device=self.device, **dict(config.model_options))
        if config.dtype == "int8":
            self.model = quantize_int8(self.model)
        self.pad_id = self.model.config.pad_token_id or 0
        self.batch_tokens = config.batch_tokens   # halved on running out of GPU memory (`_shrink`)
        # Output width from one tiny forward pass, so a batch without windows has the same column type.
        probe = np.zeros(1, dtype=np.int32)
        self.width = int(self._launch([probe], [probe], np.array([1]), [np.array([0])])[0].shape[-1])
        if self.cores:
            self.cores.idle()   # loaded: its threads go to the busy actors if no batch comes (pipeline.cores)

    def _set_threads(self) -> None:
        """Intra-op threads for the calling thread: OpenMP keeps the thread count per thread, and a
        thread that never set it runs oneDNN/MKL matmuls on OMP_NUM_THREADS, which Ray sets to 1 in
        its workers. Ray runs an actor's batches in another thread than its constructor, so this runs
        before every micro-batch (it measured 1 of 2 cores busy in the matmuls otherwise; bench/NOTES.md),
        with the threads of the node's idle model actors added when there are some (`NodeCores`)."""
        if self.config.threads and self.device == "cpu":
            import torch

            torch.set_num_threads(self.cores.share() if self.cores else self.config.threads)

    def __call__(self, table: pa.Table) -> pa.Table:
        with Timer() as timer, self.cores.busy() if self.cores else contextlib.nullcontext():
            table = self._refuse_unknown_ids(table)
            windows_column = table.column(WINDOWS)
            windows_per_doc = flat_lengths(windows_column)
            windows = flatten(windows_column)
            ids = windows.field("ids")
            lengths = flat_lengths(ids)
            ids_values = split_rows(flatten(ids).to_numpy(), lengths)
            type_values = split_rows(flatten(windows.field("type_ids")).to_numpy(), lengths)
            outputs, padded = self._run(ids_values, type_values, lengths)
            valid = ~np.asarray(windows_column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            per_doc = nest(outputs, windows_per_doc, valid)
            doc_of_window = np.repeat(np.arange(len(windows_per_doc)), windows_per_doc)
            padded_per_doc = np.bincount(doc_of_window, weights=padded, minlength=len(windows_per_doc))
            table = set_column(table, OUTPUTS, per_doc)
            table = set_column(table, f"{STAT_PREFIX}padded_tokens", pa.array(padded_per_doc.astype(np.int64)))
            if self.device == "cpu":
                release_free_memory()
        return add_seconds(table, self.name, timer.seconds)

    def _refuse_unknown_ids(self, table: pa.Table) -> pa.Table:
        """Documents with a token id past the model's embeddings (a tokenizer with tokens added after the
        model was saved, or another model's tokenizer) or a token type past its type embeddings become
        error rows: in a forward they would fail the whole batch."""
        windows_column = table.column(WINDOWS)
        windows = flatten(windows_column)
        checks = [("ids", self.model.config.vocab_size, "token id {} is past the model's vocabulary of {} tokens")]
        if self.model.uses_token_type_ids:
            checks.append(("type_ids", max(self.model.config.type_vocab_size, 1),
                           "token type {} is past the model's {} token types"))
        errors: dict[int, tuple[str, str, str]] = {}
        for field, limit, message in checks:
            values = flatten(windows.field(field)).to_numpy()
            if values.max(initial=0) < limit:
                continue
            doc_of_window = np.repeat(np.arange(table.num_rows), flat_lengths(windows_column))
            doc_of_token = np.repeat(doc_of_window, flat_lengths(windows.field(field)))
            for row in np.unique(doc_of_token[values >= limit]):
                worst = int(values[doc_of_token == row].max())
                errors.setdefault(int(row), (self.name, "ValueError",
                                             message.format(worst, limit) + ": the tokenizer does not match the model"))
        if not errors:
            return table
        bad = np.zeros(table.num_rows, dtype=bool)
        bad[list(errors)] = True
        table = set_column(table, WINDOWS, pc.if_else(pa.array(bad), pa.scalar(None, windows_column.type), windows_column))
        return with_errors(table, errors)

    def _run(self, ids: list[np.ndarray], type_ids: list[np.ndarray], lengths: np.ndarray):
        """Per window (in input order): the output rows as a list<fixed_size_list<float32>> array, padded length.

        Each pass's forward and its copy back to the host are queued before the previous one's
        output is read: on a GPU the next forward runs while this thread slices outputs and pads inputs
        (on CPU the order of work is the same as one by one). A pass the GPU has no memory for
        halves the budget of this actor's passes from then on (outputs never depend on it).
        """
        import torch

        results: list[np.ndarray | None] = [None] * len(ids)
        padded = np.zeros(len(ids), dtype=np.int64)
        pending = self._passes(np.argsort(-lengths, kind="stable"), lengths)

        def collect(batches: list[np.ndarray], outs: list, copied) -> None:
            if copied is not None:
                copied.synchronize()
            for members, out in zip(batches, outs):
                out = out.numpy()
                for row, window in enumerate(members):
                    # (T, W) per token, or (W,) per sequence → one vector per entry
                    results[window] = out[row, : lengths[window]] if out.ndim == 3 else out[row][None, :]
                padded[members] = int(lengths[members[0]])

        previous = None
        while pending:
            batches = pending.pop(0)
            self._set_threads()
            try:
                launched = (batches, *self._to_host(self._launch(ids, type_ids, lengths, batches)))
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not _out_of_memory(error):
                    raise
                launched = None   # handled below, once the failed forward's tensors are freed with the error
            if launched is None:
                windows = np.concatenate(batches + [m for later in pending for m in later])
                self._shrink(batches, lengths)
                pending = self._passes(windows, lengths)
                continue
            if previous is not None:
                collect(*previous)
            previous = launched
        if previous is not None:
            collect(*previous)
        return _vectors(results, self.width), padded

    def _passes(self, windows: np.ndarray, lengths: np.ndarray) -> list[list[np.ndarray]]:
        """`windows` (longest first) cut into micro-batches under this actor's budget (window indices per batch),
        and those into forward passes of at most `batch_tokens` padded tokens together (`passes`; on CPU at
        most CPU_PASS_TOKENS)."""
        order, groups = micro_batches(lengths[windows], self.batch_tokens, PADDING[self.device])
        budget = min(self.batch_tokens, CPU_PASS_TOKENS) if self.device == "cpu" else self.batch_tokens
        return passes([windows[order[group]] for group in groups], lengths, budget)

    def _shrink(self, batches: list[np.ndarray], lengths: np.ndarray) -> None:
        """Out of GPU memory in a pass of these micro-batches: later passes get at most half of its padded
        tokens; a single window has nothing to split."""
        import torch

        if self.device == "cuda":
            torch.cuda.empty_cache()
        tokens = sum(padded_tokens(members, lengths) for members in batches)
        if sum(len(members) for members in batches) == 1:
            raise torch.OutOfMemoryError(f"out of {self.device} memory in a single window of {tokens} tokens: the "
                                         "device has too little free memory for this model")
        self.batch_tokens = max(1, min(self.batch_tokens, tokens) // 2)
        logging.getLogger(__name__).warning(
            "out of %s memory in a pass of %d padded tokens: --batch-tokens %d from now on in this actor",
            self.device, tokens, self.batch_tokens)

    def _to_host(self, outs: list) -> tuple[list, object]:
        """(the outputs as float32 on the host, an event to wait for first or None): from a GPU the copies are
        queued behind the forward into pinned memory, and waited for only when the outputs are read."""
        import torch

        if self.device == "cpu":
            return [out.float() for out in outs], None
        host = [out.float().to("cpu", non_blocking=True) for out in outs]
        copied = torch.cuda.Event()
        copied.record()
        return host, copied

    def _launch(self, ids: list[np.ndarray], type_ids: list[np.ndarray], lengths: np.ndarray,
                batches: list[np.ndarray]) -> list:
        """One forward pass over micro-batches of the given windows (each longest first, right-padded to its
        longest) → their output tensors, on the device."""
        import torch

        padded = []
        for members in batches:
            width = int(lengths[members[0]])
            input_ids = np.full((len(members), width), self.pad_id, dtype=np.int64)
            token_types = np.zeros((len(members), width), dtype=np.int64)
            mask = np.zeros((len(members), width), dtype=np.int64)
            for row, window in enumerate(members):
                n = int(lengths[window])
                input_ids[row, :n], token_types[row, :n], mask[row, :n] = ids[window], type_ids[window], 1
            padded.append((self._to_device(input_ids), self._to_device(mask),
                           self._to_device(token_types) if self.model.uses_token_type_ids else None))
        with torch.inference_mode():
            return self.model.forward_batches(padded)

    def _to_device(self, array: np.ndarray):
        """A host array on the model's device; to a GPU from pinned memory, without waiting for the copy."""
        import torch

        tensor = torch.from_numpy(array)
        if self.device == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)


def _out_of_memory(error: BaseException) -> bool:
    """The device ran out of memory: torch's allocator, or a cuBLAS / cuDNN workspace it could not get."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or any(
        sign in str(error) for sign in ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "out of memory"))


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc; elsewhere there is nothing to call).

    Each batch's tensors have other sizes than the last one's; glibc kept the freed holes and a CPU
    model actor's RSS grew by ≈ 30 MB per 1,000 documents without end (MiniLM, bf16; bench/NOTES.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _vectors(rows: list[np.ndarray], width: int) -> pa.ListArray:
    return ragged(rows, pa.list_(pa.float32(), width))
