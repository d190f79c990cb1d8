"""bench/memory_cpu.py's TensorMemoryMeter: the peak of live tensor bytes, as a GPU allocator would count them."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from memory_cpu import TensorMemoryMeter  # noqa: E402


def test_meter_counts_live_storages_once_and_their_peak():
    meter = TensorMemoryMeter()
    with meter:
        a = torch.ones(1000, 1000)  # 4 MB
        view = a[:10]  # shares a's storage: not counted again
        b = a @ a  # 4 MB more: the peak
        del b
        c = a + 1  # reuses the freed bytes: current back to 8 MB, peak unchanged
        meter.sweep()
        assert meter.current == 8_000_000 and meter.peak == 8_000_000
        del a, view, c
        meter.sweep()
        assert meter.current == 0


def test_meter_sees_backward_and_registered_parameters():
    layer = torch.nn.Linear(500, 500, bias=False)  # 1 MB of weights, created outside the meter
    meter = TensorMemoryMeter()
    with meter:
        meter.add(layer.parameters())
        x = torch.randn(2000, 500)  # 4 MB input
        loss = layer(x).square().mean()
        meter.reset_peak()
        loss.backward()  # the gradient (1 MB) and backward's temporaries are counted
        meter.sweep()
        assert meter.current >= 1_000_000 + 4_000_000 + 1_000_000  # weights, x, weight.grad
        assert meter.peak >= meter.current + 4_000_000  # a [2000, 500] gradient of the output was alive
