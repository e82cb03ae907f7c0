"""combine_windows: truncate, token-weighted mean, normalisation, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.embed_decode import LONG_TEXT_MODES, combine_windows

WINDOWS = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 0.0, -4.0, 1.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
COUNTS = [32, 32, 8]  # two full windows, a short last one


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def test_truncate_returns_the_first_window_unchanged():
    combined = combine_windows(WINDOWS, COUNTS)
    assert combined.dtype == np.float32 and combined.shape == (4,)
    np.testing.assert_array_equal(combined, WINDOWS[0])
    assert combined is not WINDOWS[0] and not np.shares_memory(combined, WINDOWS)


def test_truncate_normalised():
    np.testing.assert_allclose(combine_windows(WINDOWS, COUNTS, normalize=True), unit(WINDOWS[0]), rtol=1e-6)


def test_mean_is_token_weighted():
    combined = combine_windows(WINDOWS, COUNTS, long_text="mean")
    expected = (32 * WINDOWS[0] + 32 * WINDOWS[1] + 8 * WINDOWS[2]) / 72
    assert combined.dtype == np.float32
    np.testing.assert_allclose(combined, expected, rtol=1e-6)
    assert not np.allclose(combined, WINDOWS.mean(axis=0))  # not the plain mean of windows


def test_mean_with_equal_counts_is_the_plain_mean():
    np.testing.assert_allclose(
        combine_windows(WINDOWS, [5, 5, 5], long_text="mean"), WINDOWS.mean(axis=0), rtol=1e-6
    )


def test_mean_skips_windows_without_tokens():
    np.testing.assert_allclose(combine_windows(WINDOWS, [0, 10, 0], long_text="mean"), WINDOWS[1], rtol=1e-6)


def test_mean_of_normalised_windows_is_normalised_again():
    normalised = np.stack([unit(w) for w in WINDOWS]).astype(np.float32)
    combined = combine_windows(normalised, COUNTS, long_text="mean", normalize=True)
    assert np.linalg.norm(combined) == pytest.approx(1.0, abs=1e-6)
    expected = unit(np.average(normalised, axis=0, weights=COUNTS))
    np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-7)
    unnormalised = combine_windows(normalised, COUNTS, long_text="mean")
    assert np.linalg.norm(unnormalised) < 0.99  # why the second normalisation is needed


@pytest.mark.parametrize("long_text", LONG_TEXT_MODES)
def test_one_window_is_the_window_in_every_mode(long_text):
    one = WINDOWS[1:2]
    np.testing.assert_array_equal(combine_windows(one, [7], long_text=long_text), one[0])
    np.testing.assert_allclose(
        combine_windows(one, [7], long_text=long_text, normalize=True), unit(one[0]), rtol=1e-6
    )


def test_zero_vector_stays_finite_when_normalised():
    combined = combine_windows(np.zeros((2, 3), np.float32), [4, 4], long_text="mean", normalize=True)
    np.testing.assert_array_equal(combined, np.zeros(3, np.float32))


@pytest.mark.parametrize(
    "embeddings, counts, long_text, message",
    [
        (WINDOWS, COUNTS, "max", "long_text='max': expected one of truncate, mean"),
        (WINDOWS[0], [1], "mean", r"shape \(4,\): expected \(windows >= 1, dim\)"),
        (WINDOWS[:0], [], "mean", r"shape \(0, 4\)"),
        (WINDOWS, [1, 2], "mean", "expected 3 non-negative integers"),
        (WINDOWS, [1, -2, 3], "mean", "expected 3 non-negative integers"),
        (WINDOWS, [1.5, 2.0, 3.0], "truncate", "expected 3 non-negative integers"),
        (WINDOWS, [0, 0, 0], "mean", "needs at least one token"),
    ],
)
def test_argument_errors(embeddings, counts, long_text, message):
    with pytest.raises(ValueError, match=message):
        combine_windows(embeddings, counts, long_text=long_text)
