"""The one even split (engine/parallel/split.py): prompts over engines (the pool itself runs in
tests/engine/test_engines_per_node.py on 2 simulated nodes), items over DP ranks, cores over
vLLM workers, layers over pipeline stages."""

from engine.parallel.split import even_split as split


def test_split_is_contiguous_balanced_and_complete():
    assert split(8, 2) == [(0, 4), (4, 8)]
    assert split(5, 2) == [(0, 3), (3, 5)]
    assert split(1, 3) == [(0, 1), (1, 1), (1, 1)]  # an engine may get nothing
    for count in range(12):
        for parts in range(1, 5):
            ranges = split(count, parts)
            assert ranges[0][0] == 0 and ranges[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1
