"""Models: parameter counts from the architecture, output shapes, option-A shortcuts, training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from clrfit.models import BasicBlock, cifar_resnet, get_model, mnist1d_cnn, resnet20, resnet56


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_resnet_params(depth: int, n_classes: int = 10, in_channels: int = 3) -> int:
    """He et al. 2016: 3x3 conv stem (16), 3 stages x n blocks of two 3x3 convs, BN after every conv
    (weight + bias), parameter-free option-A shortcuts, FC 64 -> classes. Convs have no bias."""
    n = (depth - 2) // 6
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_channels, 16) + bn(16)
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += conv(c_in, c) + bn(c) + conv(c, c) + bn(c)
            c_in = c
    return total + 64 * n_classes + n_classes


def test_resnet20_and_56_parameter_counts():
    assert n_params(resnet20()) == expected_resnet_params(20)
    assert n_params(resnet56()) == expected_resnet_params(56)
    assert 0.26e6 < n_params(resnet20()) < 0.28e6  # "0.27M" in the paper's table 6
    assert 0.84e6 < n_params(resnet56()) < 0.86e6  # "0.85M"
    assert n_params(cifar_resnet(32, n_classes=100, in_channels=1)) == expected_resnet_params(32, 100, 1)


def test_resnet_layer_count_is_the_depth():
    model = resnet20()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 20


@pytest.mark.parametrize("in_channels,size", [(3, 32), (1, 28)])
def test_resnet_output_shape(in_channels, size):
    model = resnet20(n_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlock(16, 32, stride=2)
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # the input sits in the middle channels
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0


def test_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        cifar_resnet(21)
    with pytest.raises(TypeError, match="depth"):
        cifar_resnet("20")


def test_mnist1d_cnn_shape_and_size():
    model = mnist1d_cnn()
    out = model(torch.randn(5, 1, 40))
    assert out.shape == (5, 10)
    assert n_params(model) < 200_000  # small enough for quick CPU training


def test_mnist1d_cnn_trains_on_a_tiny_batch():
    torch.manual_seed(0)
    model = mnist1d_cnn()
    x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_get_model():
    assert n_params(get_model("resnet56")) == expected_resnet_params(56)
    assert n_params(get_model("resnet20", n_classes=10, in_channels=1)) == expected_resnet_params(20, 10, 1)
    assert get_model("cnn1d", n_classes=3)(torch.randn(2, 1, 40)).shape == (2, 3)
    with pytest.raises(ValueError, match="arch"):
        get_model("vgg16")


@pytest.mark.slow
def test_mnist1d_cnn_reaches_94_percent(tmp_path):
    """The CNN with a 5-epoch 1cycle on MNIST-1D (4000/1000) passes 94% validation accuracy."""
    from clrfit import Learner, accuracy
    from clrfit.datasets import mnist1d

    torch.manual_seed(0)
    learn = Learner(mnist1d_cnn(), mnist1d(cache_dir=tmp_path), metrics=[accuracy], progress=False, table=False)
    learn.fit(0.5, 1, cycle_len=5, use_clr_beta=(10, 10, 0.95, 0.85), wds=1e-4)
    assert learn.sched.rec_metrics[-1][0] >= 0.94
