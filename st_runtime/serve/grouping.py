"""Length groups for a batch that several requests share (the server's batcher; never for one request alone).

Texts from many clients arrive in random lengths. Run as one set, sorted by length and cut by the tower's
token budget, the graph batches of a few dozen short queries carry a fifth to a quarter of padding
(all-MiniLM-L6-v2 on benchmarks/serve.py's queries: 1.27x the real tokens in batches of 20-32, against 1.003x
for ``encode`` of the whole corpus at once). Each graph run also has a fixed cost (on the CPU, streaming the
weights and starting each operator: a one-text run costs about 15 tokens more than its share of a large batch).
``length_groups`` cuts the sorted texts where that pays: the groups minimize (fixed cost per graph run + padded
tokens), each group planned as the tower plans it (longest first, under its budget). On the GPU the batcher
does not regroup (a run's fixed cost there is of another order, and padding to multiples of 8 is the policy).

A request alone is never regrouped: its rows stay those of ``encode`` of its texts, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..batching import longest_first, plan_batches

# The fixed cost of one graph run on the CPU, in tokens of a batch. all-MiniLM-L6-v2 on 2 vCPUs (2026-12-07, a
# shared Xeon VM): a one-query run costs 13-15 tokens more than its share of a large batch; in-process runs of
# random chunks of 32 queries cost 3.1-3.2 CPU ms per text as one set, 2.8-2.9 / 2.6-2.7 / 2.5-2.6 / 2.5-2.6
# grouped with a run cost of 4 / 8 / 16 / 32 tokens, against 2.5 for the whole corpus at once (one run).
RUN_COST_TOKENS = 16
MAX_TEXTS = 1024  # larger batches are left to the tower: sorted, they pad little (200 random queries: 1.05x)
MAX_CUTS = 33  # candidate cuts searched at most (a batch of many distinct lengths searches evenly spaced ones)


def length_groups(
    lengths: np.ndarray,
    budget: Callable[[int], int | None],
    max_items: int,
    run_cost: float = RUN_COST_TOKENS,
) -> list[np.ndarray] | None:
    """The indices of each group (longest texts first), or None where one group is cheapest.

    ``budget(width)``: the most padded tokens a graph batch of that width holds (None: no cap);
    ``max_items``: the most texts a graph batch holds. Groups are cut only where the length changes, so the
    search runs over the distinct lengths (at most MAX_CUTS of them)."""
    n = len(lengths)
    if n < 2 or n > MAX_TEXTS:
        return None
    order = longest_first(lengths)
    ordered = lengths[order]
    cuts = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), n]
    if len(cuts) <= 2:  # one length: nothing to save
        return None
    if len(cuts) > MAX_CUTS:  # bound the search (quadratic in the cuts): evenly spaced candidates
        pick = np.linspace(0, len(cuts) - 1, MAX_CUTS).round().astype(int)
        cuts = [cuts[i] for i in sorted(set(pick.tolist()))]

    def cost(a: int, b: int) -> float:
        """Runs x run_cost + padded tokens of texts a:b as the tower plans them (batching.plan_batches)."""
        plan = plan_batches(ordered[a:b], max_items, budget=budget)
        return sum(run_cost + (end - start) * width for start, end, width in plan)

    best = [0.0] + [float("inf")] * (len(cuts) - 1)
    back = [0] * len(cuts)
    for k in range(1, len(cuts)):
        for m in range(k):
            c = best[m] + cost(cuts[m], cuts[k])
            if c < best[k]:
                best[k], back[k] = c, m
    bounds = []
    k = len(cuts) - 1
    while k > 0:
        bounds.append((cuts[back[k]], cuts[k]))
        k = back[k]
    if len(bounds) == 1:
        return None
    return [order[a:b] for a, b in reversed(bounds)]


class Scatter:
    """Rows written at ``idx[i]`` of ``rows`` when a tower writes them at ``i`` (``rows[idx] = batch``)."""

    def __init__(self, rows, idx: np.ndarray):
        self.rows = rows
        self.idx = idx

    def __setitem__(self, i, value) -> None:
        self.rows[self.idx[i]] = value

    def __len__(self) -> int:
        return len(self.idx)
