import pytest
import torch
from torch import nn

from gsmu.base import models
from gsmu.mu import cost


def test_linear_and_conv_macs_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    macs = cost.layer_macs(model, torch.zeros(7, 1, 6, 6))
    assert macs == {"0": 2 * 4 * 4 * 9, "2": 32 * 5}  # per example, whatever the batch size


def test_lstm_macs_by_hand():
    lstm = models.CharLSTM(10, embed_dim=4, hidden_size=3, num_layers=2)
    macs = cost.layer_macs(lstm, torch.zeros(2, 5, dtype=torch.long))
    lstm_name = next(n for n, m in lstm.named_modules() if isinstance(m, nn.LSTM))
    assert macs[lstm_name] == 5 * (4 * 3 * (4 + 3) + 4 * 3 * (3 + 3))


def test_mnist_head_is_a_small_share_of_a_pass():
    model = models.MnistCNN()
    share = cost.mac_share(model, torch.zeros(1, 1, 28, 28), ["fc3", "out"])
    macs = cost.layer_macs(model, torch.zeros(1, 1, 28, 28))
    assert share == pytest.approx((macs["fc3"] + macs["out"]) / sum(macs.values()))
    assert share < 0.01  # a head-only HVP is far from a full pass
    assert cost.mac_share(model, torch.zeros(1, 1, 28, 28), None) == 1.0


def test_pass_counting_rules():
    assert cost.passes(gradients=10) == 10
    assert cost.passes(hvps=10) == 20  # an HVP is two passes
    assert cost.passes(forwards=3) == pytest.approx(1.0)  # a forward is a third of a pass
    assert cost.passes(gradients=4, hvps=3, share=0.5, forwards=6, forward_share=0.5) == pytest.approx(5 + 1)


def test_clear_errors():
    with pytest.raises(ValueError, match="share"):
        cost.passes(gradients=1, share=0)
    with pytest.raises(ValueError, match="starts with"):
        cost.mac_share(models.MnistCNN(), torch.zeros(1, 1, 28, 28), ["nope"])
    with pytest.raises(ValueError, match="repeats"):
        cost.median_seconds(lambda: None, repeats=0)


def test_median_seconds_is_the_median():
    calls = iter([0.0, 0.02, 0.0])
    import time
    assert cost.median_seconds(lambda: time.sleep(next(calls)), repeats=3) < 0.015


def test_median_seconds_counts_measured_times_as_repeats():
    calls = []
    assert cost.median_seconds(lambda: calls.append(1), repeats=3, measured=[5.0, 7.0]) == 5.0  # median(5, 7, ~0)
    assert len(calls) == 1  # two repeats were already measured: only the third runs
    assert cost.median_seconds(lambda: calls.append(1), repeats=2, measured=[1.0, 2.0, 3.0]) == 2.0
    assert len(calls) == 1
