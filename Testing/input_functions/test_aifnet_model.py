"""AIFNet network: probability volume, weighted curve, any frame count, gradients, determinism, devices."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from AIFSelectorLib.input_functions.aifnet.config import network_frames  # noqa: E402
from AIFSelectorLib.input_functions.aifnet.model import (AIFNet, AIFNetConfig, macs_per_voxel,  # noqa: E402
                                                        volume_softmax, weighted_sum)
from AIFSelectorLib.models.blocks import count_parameters  # noqa: E402
from training.aifnet.ablation import RegressionAIFNet, SegmentationAIFNet, segmentation_loss  # noqa: E402


def _net(n_frames=12, layers=3, seed=0):
    torch.manual_seed(seed)
    return AIFNet(AIFNetConfig(n_frames=n_frames, n_layers=layers, base_width=4, max_width=8)).eval()


def _input(t=12, shape=(3, 10, 11), seed=1):
    g = torch.Generator().manual_seed(seed)
    return 40 + 30 * torch.randn((1, t) + shape, generator=g)


def test_pvol_sums_to_one_and_is_non_negative():
    with torch.no_grad():
        curve, pvol = _net()(_input())
    assert pvol.shape == (1, 3, 10, 11)
    assert float(pvol.min()) >= 0
    assert float(pvol.sum()) == pytest.approx(1.0, abs=1e-5)


def test_curve_is_the_pvol_weighted_sum():
    x = _input()
    curve, pvol = _net()(x)
    expected = (pvol[:, None] * x).sum(dim=(2, 3, 4))
    torch.testing.assert_close(curve, expected, rtol=1e-5, atol=1e-4)
    full = _input(t=30, seed=5)
    curve_full, pvol2 = _net()(x, full)
    assert curve_full.shape == (1, 30)
    torch.testing.assert_close(curve_full, (pvol2[:, None] * full).sum(dim=(2, 3, 4)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n", [10, 12, 25, 61])
def test_any_number_of_frames_at_inference(n):
    net = _net(n_frames=12)
    data = _input(t=n)[0].numpy()
    times = np.arange(n) * 1.0
    xin = network_frames(data, times, 12, 1.0)
    assert xin.shape == (12,) + data.shape[1:]
    with torch.no_grad():
        curve, pvol = net(torch.from_numpy(xin)[None], torch.from_numpy(data)[None])
    assert curve.shape == (1, n)
    assert float(pvol.sum()) == pytest.approx(1.0, abs=1e-5)


def test_network_frames_resamples_other_intervals():
    data = np.arange(20, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 2, 2), np.float32)
    out = network_frames(data, np.arange(20) * 2.0, 8, 1.0)  # 2 s frames -> 1 s grid
    np.testing.assert_allclose(out[:, 0, 0, 0], np.arange(8) / 2.0)
    same = network_frames(data[:8], np.arange(8.0), 8, 1.0)
    np.testing.assert_array_equal(same, data[:8])


def test_wrong_frame_count_is_refused():
    with pytest.raises(ValueError, match="frames"):
        _net(n_frames=12)(_input(t=13))


def test_gradients_reach_the_first_layer():
    net = _net().train()
    curve, _ = net(_input())
    target = torch.linspace(0, 1, 12)[None]
    loss = ((curve - curve.mean()) * (target - target.mean())).sum()
    loss.backward()
    g = net.features[0][0].weight.grad
    assert g is not None and float(g.abs().sum()) > 0


def test_same_input_same_output():
    net, x = _net(), _input()
    with torch.no_grad():
        a, pa = net(x)
        b, pb = net(x)
    assert torch.equal(a, b) and torch.equal(pa, pb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cpu_and_cuda_agree():
    net, x = _net(), _input()
    with torch.no_grad():
        a, pa = net(x)
        b, pb = net.cuda()(x.cuda())
    torch.testing.assert_close(pa, pb.cpu(), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(a, b.cpu(), rtol=1e-3, atol=1e-2)


def test_paper_architecture_widths_and_kernels():
    cfg = AIFNetConfig(n_frames=40, n_layers=5, base_width=16, max_width=None)
    assert cfg.widths == (16, 32, 64, 128, 256)  # 2^(3+k), k = 1..5
    net = AIFNet(cfg)
    kernels = [blk[0].kernel_size for blk in net.features]
    assert kernels[0] == (1, 3, 3) and all(k == (3, 3, 3) for k in kernels[1:])
    assert net.out.out_channels == 1
    assert count_parameters(net) > 1_000_000
    assert macs_per_voxel(cfg) > 1_000_000
    assert AIFNetConfig(n_layers=2).widths == (8, 16)


def test_volume_softmax_and_weighted_sum_helpers():
    logits = torch.zeros(2, 1, 2, 3, 4)
    p = volume_softmax(logits)
    assert p.shape == (2, 2, 3, 4)
    torch.testing.assert_close(p.sum(dim=(1, 2, 3)), torch.ones(2))
    x = torch.ones(2, 5, 2, 3, 4) * 7
    torch.testing.assert_close(weighted_sum(p, x), torch.full((2, 5), 7.0))


def test_ablation_variants():
    cfg = AIFNetConfig(n_frames=12, n_layers=2, base_width=4, max_width=8)
    reg = RegressionAIFNet(cfg)
    assert reg(_input()).shape == (1, 12)
    seg = SegmentationAIFNet(AIFNetConfig(n_frames=12, n_layers=2, base_width=4), top_k=5)
    x = _input()
    curve, pvol = seg(x)
    assert curve.shape == (1, 12)
    assert int((pvol > 0).sum()) == 5 and float(pvol.sum()) == pytest.approx(1.0)
    mask = torch.zeros(1, 3, 10, 11, dtype=torch.bool)
    mask[0, 1, 4:6, 4:6] = True
    loss = segmentation_loss(seg.logits(x), mask)
    loss.backward()
    assert np.isfinite(loss.item())
