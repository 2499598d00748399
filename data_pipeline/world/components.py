"""Binary-image tools for the reader, in plain numpy: connected components and
3x3-cross morphology. Masks are bool [H, W]; labels are int32 [H, W], 0 = none."""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True in row-major order: (row, start, end) with end exclusive."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)  # +1 at a run start, -1 one past its end
    rs, cs = np.nonzero(d == 1)
    _, ce = np.nonzero(d == -1)
    return rs, cs, ce  # np.nonzero is row-major, so starts and ends pair up


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of ``mask`` [H, W] bool.

    Returns ``(labels, n)``: int32 [H, W] with 0 off the mask and 1..n on it,
    numbered in order of each component's first pixel in row-major order.
    """
    mask = np.asarray(mask, dtype=bool)
    labels = np.zeros(mask.shape, dtype=np.int32)
    rows, starts, ends = _runs(mask)
    n_runs = len(rows)
    if n_runs == 0:
        return labels, 0
    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Runs are sorted row-major, so keys row * stride + column are sorted too. Run b in
    # the next row overlaps run a iff start_b < end_a and end_b > start_a.
    stride = mask.shape[1] + 2
    key_start = rows * stride + starts
    key_end = rows * stride + ends
    lo = np.searchsorted(key_end, (rows + 1) * stride + starts, side="right")
    hi = np.searchsorted(key_start, (rows + 1) * stride + ends, side="left")
    counts = np.maximum(hi - lo, 0)
    a_idx = np.repeat(np.arange(n_runs), counts)
    b_idx = np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    for a, b in zip(a_idx.tolist(), b_idx.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(n_runs)])
    uniq, run_label = np.unique(roots, return_inverse=True)  # roots are first runs: row-major order
    labels[mask] = np.repeat(run_label.astype(np.int32) + 1, ends - starts)
    return labels, len(uniq)


def erode(mask: np.ndarray) -> np.ndarray:
    """Keep pixels whose 4 neighbours are all in ``mask`` (outside counts as off)."""
    m = np.asarray(mask, dtype=bool)
    out = m.copy()
    out[1:, :] &= m[:-1, :]
    out[:-1, :] &= m[1:, :]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    out[0, :] = out[-1, :] = False
    out[:, 0] = out[:, -1] = False
    return out


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Grow ``mask`` by ``steps`` pixels in the 4-neighbour (city-block) sense."""
    out = np.asarray(mask, dtype=bool).copy()
    for _ in range(steps):
        m = out.copy()
        out[1:, :] |= m[:-1, :]
        out[:-1, :] |= m[1:, :]
        out[:, 1:] |= m[:, :-1]
        out[:, :-1] |= m[:, 1:]
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every off-region that does not touch the border switched on."""
    m = np.asarray(mask, dtype=bool)
    lab, n = label(~m)
    if n == 0:
        return m.copy()
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    keep = np.zeros(n + 1, dtype=bool)
    keep[border] = True
    keep[0] = True
    return m | ~keep[lab]
