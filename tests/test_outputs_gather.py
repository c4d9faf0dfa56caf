"""Outputs.gather: batches copied into place as they arrive give exactly Outputs.cat's tensors."""

from __future__ import annotations

import pytest
import torch

from supersub.novelty.outputs import Outputs


def _batch(g: torch.Generator, n: int, members: bool) -> Outputs:
    return Outputs(torch.randn(n, 3, generator=g), torch.randn(n, 7, generator=g), torch.randn(n, 5, generator=g),
                   torch.randn(n, 2, 3, generator=g) if members else None, None,
                   layers={"block-1": torch.randn(n, 4, generator=g)})


@pytest.mark.parametrize("members", [False, True])
def test_gather_equals_cat(members: bool) -> None:
    g = torch.Generator().manual_seed(0)
    parts = [_batch(g, n, members) for n in (4, 4, 3)]
    want, got = Outputs.cat(parts), Outputs.gather(iter(parts), 11)
    for a, b in zip(want._fields(), got._fields()):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(want.layers["block-1"], got.layers["block-1"])


def test_gather_refuses_a_wrong_count_or_nothing() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="expected 5 rows, got 4"):
        Outputs.gather(iter([_batch(g, 4, False)]), 5)
    with pytest.raises(ValueError, match="at least one batch"):
        Outputs.gather(iter([]), 0)
