"""Build and take apart the nested Arrow columns (documents → windows → tokens) without Python row objects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def list_offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """[3, 0, 2] -> [0, 3, 3, 5]: the offsets buffer of an Arrow list array."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{offsets[-1]} values in one batch: too many for an Arrow list; use smaller batches")
    return offsets.astype(np.int32)


def ragged(arrays: Sequence[np.ndarray], arrow_type: pa.DataType) -> pa.ListArray:
    """A list array with one entry per numpy array (1-D, or 2-D for fixed-size rows)."""
    lengths = [len(a) for a in arrays]
    if arrays:
        flat = np.concatenate([np.asarray(a) for a in arrays])
    else:
        flat = np.zeros((0,) if not pa.types.is_fixed_size_list(arrow_type) else (0, arrow_type.list_size))
    if pa.types.is_fixed_size_list(arrow_type):
        width = arrow_type.list_size
        values = pa.FixedSizeListArray.from_arrays(
            pa.array(flat.reshape(-1).astype(arrow_type.value_type.to_pandas_dtype())), width
        )
    else:
        values = pa.array(flat.astype(arrow_type.to_pandas_dtype()), type=arrow_type)
    return pa.ListArray.from_arrays(pa.array(list_offsets(lengths)), values)


def nest(values: pa.Array, lengths: Sequence[int] | np.ndarray, valid: np.ndarray | None = None) -> pa.ListArray:
    """Group consecutive `values` into one list per document; `valid=False` rows become null."""
    offsets = pa.array(list_offsets(lengths))
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def flat_lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Number of entries in each list (0 for nulls), as int64."""
    return pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def flatten(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """All entries of a list column, in order (null lists contribute nothing)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten()


def split_rows(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Inverse of concatenation: one numpy view per row."""
    return np.split(values, np.cumsum(lengths)[:-1]) if len(lengths) else []
