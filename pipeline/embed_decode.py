"""Per-window embeddings of one document -> one embedding for the document.

sentence-transformers truncates a text to `max_seq_length` tokens and embeds what is left; that
is `long_text="truncate"`, the default, which keeps `encode` parity. `long_text="mean"` covers
the whole document instead: the token-weighted mean of its window embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LONG_TEXT_MODES = ("truncate", "mean")
# torch.nn.functional.normalize's default eps, which sentence-transformers' Normalize uses.
_NORM_EPS = 1e-12


def combine_windows(
    window_embeddings: np.ndarray,
    token_counts: Sequence[int],
    long_text: str = "truncate",
    normalize: bool = False,
) -> np.ndarray:
    """One `float32[D]` embedding from the windows `float32[W, D]` of a document, in text order.

    - `long_text="truncate"`: the first window's embedding, as sentence-transformers (which
      truncates) computes it; later windows are ignored.
    - `long_text="mean"`: `sum_w(count_w * emb_w) / sum_w(count_w)`, so a short last window
      weighs less than a full one. `token_counts[w]` is the number of tokens window `w` pooled
      (its attention-mask length, special tokens included); tokens in the stride overlap of two
      windows count in both, as they were pooled in both.

    `normalize=True` L2-normalises the result (`x / max(||x||, 1e-12)`, as sentence-transformers'
    `Normalize`). Pass the same setting the windows were embedded with: the mean of unit vectors
    is shorter than one, so it is normalised again; for one window, or `truncate`, normalising an
    already normalised embedding changes nothing. With `normalize=False` and one window (or
    `truncate`) the first window comes back unchanged.
    """
    if long_text not in LONG_TEXT_MODES:
        raise ValueError(f"long_text={long_text!r}: expected one of {', '.join(LONG_TEXT_MODES)}")
    embeddings = np.asarray(window_embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"window_embeddings has shape {embeddings.shape}: expected (windows >= 1, dim)")
    counts = np.asarray(token_counts)
    windows = embeddings.shape[0]
    if counts.shape != (windows,) or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
        raise ValueError(
            f"token_counts={counts.tolist()}: expected {windows} non-negative integers, one per window"
        )

    if long_text == "truncate" or windows == 1:
        combined = embeddings[0].copy()
    else:
        if counts.sum() == 0:
            raise ValueError(f"token_counts={counts.tolist()}: the mean of windows needs at least one token")
        weights = counts.astype(np.float64)
        combined = (weights @ embeddings.astype(np.float64) / weights.sum()).astype(np.float32)
    if normalize:
        combined = combined / max(float(np.linalg.norm(combined)), _NORM_EPS)
    return combined.astype(np.float32, copy=False)
