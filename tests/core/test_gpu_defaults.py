"""What a run picks on a GPU, checked on a CPU: precision, data loading, the attention kernel."""
import pytest
import torch

from mlm.core import precision
from mlm.core.precision import resolve_precision
from mlm.core.sampling import GPU_LOADER_WORKERS, loader_settings
from mlm.errors import ConfigError
from mlm.pretrain import encoder
from mlm.pretrain.encoder import _attend, fused_attention


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA GPU as torch.cuda reports it; `gpu(bf16=False)` for one without bf16."""
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)

    def make(bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)

    return make


def test_auto_precision_is_bf16_autocast_on_a_bf16_gpu_and_fp32_elsewhere(gpu, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", use_gpu=False)[0] == "no"  # CPU without bf16 instructions: fp32
    with pytest.raises(ConfigError, match=r"^mixed_precision: bf16 \(from --mixed_precision\) on a CPU without"):
        resolve_precision("bf16", use_gpu=False)
    gpu(bf16=True)
    assert resolve_precision("auto", use_gpu=True) == ("bf16", "auto: the GPU has bf16")
    gpu(bf16=False)
    assert resolve_precision("auto", use_gpu=True) == ("no", "auto: no bf16 on this GPU")


def test_loader_workers_and_pinned_memory_on_a_gpu_only():
    assert loader_settings(None, torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    assert loader_settings(None, torch.device("cuda", 0)) == {"num_workers": GPU_LOADER_WORKERS, "pin_memory": True}
    assert loader_settings(3, torch.device("cpu")) == {"num_workers": 3, "pin_memory": False}  # asked for: kept
    assert loader_settings(0, torch.device("cuda")) == {"num_workers": 0, "pin_memory": True}


def test_sdpa_serves_attention_with_dropout_off_the_cpu():
    assert fused_attention(torch.device("cuda"), 0.1) and fused_attention(torch.device("cpu"), 0.0)
    assert not fused_attention(torch.device("cpu"), 0.1)  # the lane-dropout path, measured faster on CPUs


def test_sdpa_with_dropout_is_inverted_dropout_on_the_probabilities(monkeypatch):
    """The GPU branch, forced on the CPU: SDPA's dropout_p keeps the expected output (1/(1-p) scaling) and never
    attends to a masked key."""
    monkeypatch.setattr(encoder, "fused_attention", lambda device, p: True)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 8, generator=g) for _ in range(3))
    key_mask = torch.tensor([True, True, True, False])[None, None, None, :]
    exact = _attend(q, k, v, key_mask, 0.0)
    torch.manual_seed(0)
    draws = torch.stack([_attend(q, k, v, key_mask, 0.5) for _ in range(4000)])
    assert not torch.allclose(draws[0], exact)  # dropout did drop
    assert torch.allclose(draws.mean(0), exact, atol=0.06)
    v2 = v.clone()
    v2[..., 3, :] = 1e4  # the masked key's value: never mixed in, dropout or not
    torch.manual_seed(1)
    assert _attend(q, k, v2, key_mask, 0.5).abs().max() < 100
