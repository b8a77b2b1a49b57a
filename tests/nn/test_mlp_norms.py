"""MLPs and norms."""

import pytest
import torch
import torch.nn.functional as F

from lact_app.nn import GELUMLP, HeadRMSNorm, SwiGLUMLP, build_norm


def test_swiglu_mlp():
    torch.manual_seed(0)
    mlp = SwiGLUMLP(6, 10)
    x = torch.randn(2, 3, 6)
    expected = F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T) @ mlp.down_proj.weight.T
    torch.testing.assert_close(mlp(x), expected)
    assert all(p.dim() == 2 for p in mlp.parameters())


def test_gelu_mlp():
    torch.manual_seed(0)
    mlp = GELUMLP(6, 10, bias=False)
    assert [n for n, _ in mlp.named_parameters()] == ["fc1.weight", "fc2.weight"]
    x = torch.randn(4, 6)
    torch.testing.assert_close(mlp(x), F.gelu(x @ mlp.fc1.weight.T) @ mlp.fc2.weight.T)
    assert GELUMLP(6, 10, approximate="tanh")(x).shape == (4, 6)


def test_head_rms_norm():
    norm = HeadRMSNorm(3, 4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    x = torch.randn(2, 5, 12)
    heads = x.view(2, 5, 3, 4)
    expected = heads * torch.rsqrt(heads.square().mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected.view(2, 5, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = norm(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), expected.view(2, 5, 12), rtol=1e-2, atol=1e-2)


def test_build_norm():
    assert isinstance(build_norm("rms", 8), torch.nn.RMSNorm)
    layer = build_norm("layer", 8)
    assert isinstance(layer, torch.nn.LayerNorm) and layer.bias is None
    with pytest.raises(ValueError):
        build_norm("batch", 8)
