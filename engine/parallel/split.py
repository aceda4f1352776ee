"""Even contiguous splits: layers over pipeline stages, items over DP ranks, prompts over engines,
cores over vLLM workers all cut `count` things into `parts` ranges the same way."""

from __future__ import annotations


def even_split(count: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous (start, stop) ranges covering range(count); sizes differ by at most 1,
    the first `count % parts` ranges taking the extra one."""
    if parts < 1:
        raise ValueError(f"even_split: parts must be >= 1, got {parts}")
    per, extra = divmod(count, parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + per + (1 if k < extra else 0)
        out.append((start, stop))
        start = stop
    return out
