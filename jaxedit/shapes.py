"""Shape rounding: every padded length or batch size in jaxedit comes from here.

A jitted function compiles once per input shape, so host code pads prompts, answer spans, windows
and batches to a few sizes instead of passing their exact lengths.
"""

from __future__ import annotations

from collections.abc import Sequence


def bucket(n: int, multiple: int = 16) -> int:
    """`n` rounded up to a multiple of `multiple` (at least one multiple)."""
    return max(multiple, -(-n // multiple) * multiple)


def bucket_pow2(n: int, floor: int = 1) -> int:
    """The smallest power-of-two multiple of `floor` (>= 1) that is >= `n`."""
    size = max(floor, 1)
    while size < n:
        size *= 2
    return size


def bucket_in(n: int, sizes: Sequence[int], multiple: int) -> int:
    """The first of the ascending `sizes` that is >= `n`, else `n` rounded up to `multiple`."""
    for size in sizes:
        if n <= size:
            return size
    return bucket(n, multiple)
