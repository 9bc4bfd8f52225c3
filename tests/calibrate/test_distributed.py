"""collect_statistics under torch.distributed: two local processes (gloo), each running half of
the batches, both return the statistics of all the batches (the moments and the Taylor terms
of one process running them all); ranks that saw different layers are refused on every rank."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from fprune import PruneError
from fprune.calibrate import Batch, Statistics, collect_statistics

WORLD = 2


class Net(nn.Module):
    """conv - BN - ReLU - pool - Linear, and a second head reached by inputs of 4 channels only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)
        self.other = nn.Conv2d(4, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.other(x) if x.shape[1] == 4 else self.conv(x)
        out: Tensor = self.fc(torch.relu(self.bn(h)).mean((-2, -1)))
        return out


def _net() -> Net:
    torch.manual_seed(0)
    return Net().double().eval()


def _batches() -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(4)]


def _loss(output: object, batch: Batch) -> Tensor:
    assert isinstance(output, Tensor)
    return output.tanh().sum()


def _worker(rank: int, init: str, out: str) -> None:
    """One rank: the statistics of its half of the batches, saved; then a batch that reaches
    another layer on rank 1 only, whose refusal is written down."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        batches = _batches()
        half = len(batches) // WORLD
        mine = batches[rank * half : (rank + 1) * half]
        collect_statistics(_net(), mine, loss=_loss, progress=False).save(os.path.join(out, f"rank{rank}.safetensors"))
        channels = 4 if rank == 1 else 3
        try:
            collect_statistics(_net(), [torch.randn(1, channels, 3, 3, dtype=torch.float64)], progress=False)
            message = "no error"
        except PruneError as error:
            message = str(error)
        Path(out, f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes importing torch: about 10-15 s on two busy cores
def test_each_rank_returns_the_statistics_of_all_batches(tmp_path: Path) -> None:
    assert not dist.is_initialized()
    mp.spawn(_worker, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=WORLD, join=True)  # type: ignore[attr-defined, no-untyped-call]
    expected = collect_statistics(_net(), _batches(), loss=_loss)  # one process, every batch
    assert expected.batches == 4 and expected.first_order
    for rank in range(WORLD):
        got = Statistics.load(tmp_path / f"rank{rank}.safetensors")
        assert got.batches == expected.batches
        assert got.inputs.keys() == expected.inputs.keys() == {"conv.weight", "fc.weight"}
        for fqn, moments in expected.inputs.items():
            assert got.inputs[fqn].count == moments.count
            torch.testing.assert_close(got.inputs[fqn].total, moments.total, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(got.inputs[fqn].squares, moments.squares, rtol=1e-12, atol=1e-12)
        assert got.first_order.keys() == expected.first_order.keys()
        for key, term in expected.first_order.items():
            torch.testing.assert_close(got.first_order[key], term, rtol=1e-12, atol=1e-12)
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("collect_statistics: the ranks saw different layers"), message


def test_without_a_process_group_nothing_is_reduced() -> None:
    assert not dist.is_initialized()
    one = collect_statistics(_net(), _batches()[:1])
    assert one.batches == 1 and one.inputs["conv.weight"].count == 2 * 25
