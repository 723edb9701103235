"""The ImageBind adapter: the import workaround, presets, and checkpoint loading."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ibdc_cli.encoders.imagebind import CHECKPOINT_ENV, PRESETS, load_encoder
from ibdc_cli.errors import IbdcError


def test_import_works_without_imagebind_data_on_pinned_stack():
    code = (
        "import sys; from ibdc_cli.encoders.imagebind import imagebind_model_module as m; "
        "mod = m(); assert hasattr(mod, 'ImageBindModel'); "
        "assert 'imagebind.data' not in sys.modules and 'pytorchvideo' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_tiny_preset_is_the_imagebind_class_and_seeded():
    a = load_encoder("imagebind_tiny", seed=1)
    b = load_encoder("imagebind_tiny", seed=1)
    c = load_encoder("imagebind_tiny", seed=2)
    assert type(a.model).__name__ == "ImageBindModel"
    tokens = torch.randint(1, 1000, (3, 77))
    tokens[:, -1] = 49407
    ea, eb, ec = (e.embed("text", tokens) for e in (a, b, c))
    assert ea.shape == (3, PRESETS["imagebind_tiny"]["out_embed_dim"])
    assert torch.equal(ea, eb) and not torch.allclose(ea, ec)
    assert torch.allclose(ea.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_embeddings_are_unit_norm_although_imagebind_scales_audio():
    enc = load_encoder("imagebind_tiny", seed=0)
    x = torch.randn(2, 3, 1, 128, 204)
    raw = enc.forward_raw("audio", x)
    assert raw.norm(dim=-1).min() > 5  # logit scale x20, clip-averaged
    assert torch.allclose(enc.embed("audio", x).norm(dim=-1), torch.ones(2), atol=1e-5)


def test_huge_without_weights_names_both_ways(monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(IbdcError, match="--checkpoint") as info:
        load_encoder("imagebind_huge")
    assert CHECKPOINT_ENV in str(info.value) and "--random-init" in str(info.value)


def test_checkpoint_round_trip_pth(tmp_path, monkeypatch):
    source = load_encoder("imagebind_tiny", seed=7)
    path = tmp_path / "weights.pth"
    torch.save(source.model.state_dict(), path)
    loaded = load_encoder("imagebind_tiny", checkpoint=path, seed=0)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(source.embed("image", x), loaded.embed("image", x))
    assert loaded.describe()["weights"] == loaded.checkpoint and len(loaded.checkpoint) == 64
    monkeypatch.setenv(CHECKPOINT_ENV, str(path))
    from_env = load_encoder("imagebind_tiny", seed=0)
    assert torch.equal(source.embed("image", x), from_env.embed("image", x))


def test_mismatched_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    state = load_encoder("imagebind_tiny", seed=0).model.state_dict()
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    state[key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "other.pth")
    with pytest.raises(IbdcError, match="does not match preset imagebind_tiny"):
        load_encoder("imagebind_tiny", checkpoint=tmp_path / "other.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(IbdcError, match="cannot read checkpoint"):
        load_encoder("imagebind_tiny", checkpoint=tmp_path / "broken.pth")
    with pytest.raises(IbdcError, match="not found"):
        load_encoder("imagebind_tiny", checkpoint=tmp_path / "nope.pth")
