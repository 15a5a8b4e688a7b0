"""The EfficientAT input pipeline: 16 kHz audio computed on the model's own grid gives what
resampling to 32 kHz gives (real clips, real weights where present)."""

from pathlib import Path

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from asdcli.models.efficientat import MobileNetAudio, divisible

REAL = Path(__file__).resolve().parents[3] / "shared" / "models" / "efficientat-mn04-as" / "model.safetensors"
CLIPS = Path(__file__).resolve().parents[3] / "shared" / "data" / "dcase2020-mini"


def test_channel_rounding_and_shapes_are_mobilenets():
    assert [divisible(16 * 0.4), divisible(960 * 0.4), divisible(1280 * 0.4), divisible(72 * 0.4)] == [8, 384, 512, 32]
    model = MobileNetAudio(0.4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 16000) * 0.1, 16000)
    assert out.logits.shape == (2, 527) and out.embedding.shape == (2, 384)
    assert model.mel(torch.randn(1, 160000), 16000).shape == model.mel(torch.randn(1, 320000), 32000).shape


@pytest.mark.skipif(not (REAL.is_file() and CLIPS.is_dir()), reason="real weights or clips not present in ../shared")
def test_16khz_audio_embeds_as_if_resampled_to_32khz():
    from safetensors.torch import load_file

    model = MobileNetAudio(0.4)
    model.load_state_dict(load_file(str(REAL)), strict=False)
    model.eval()
    for path in sorted(CLIPS.glob("*/test/*.wav"))[::5]:
        wave, rate = sf.read(str(path), dtype="float32")
        wave = torch.from_numpy(wave if wave.ndim == 1 else wave[:, 0].copy())[None]
        with torch.no_grad():
            direct = model(wave, rate).embedding
            resampled = model(AF.resample(wave, rate, 32000), 32000).embedding
        assert float(F.cosine_similarity(direct, resampled)) > 0.998, path.name


def test_inference_copy_folds_batch_norms_and_follows_the_weights():
    from asdcli.config_branches import PretrainedConfig
    from asdcli.models.backbones import EfficientAtBackbone

    torch.manual_seed(0)
    backbone = EfficientAtBackbone(PretrainedConfig(source="random"))
    for module in backbone.modules():  # statistics and affine terms far from a fresh batch norm's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(3, 1, 128, 200)
    backbone.eval()
    with torch.no_grad():
        plain = backbone.model.forward_mel(x).embedding
        fast = backbone(x)
        assert torch.allclose(fast, plain, rtol=1e-4, atol=1e-5)
        assert not any("_inference" in k for k in backbone.state_dict())
        first = backbone._inference[1]
        assert backbone(x) is not None and backbone._inference[1] is first  # weights unchanged: reused
        backbone.model.features[0][0].weight.mul_(2.0)  # a weight changes: a new folded copy
        changed = backbone(x)
        assert backbone._inference[1] is not first
        assert torch.allclose(changed, backbone.model.forward_mel(x).embedding, rtol=1e-4, atol=1e-5)
    backbone.train()
    with torch.enable_grad():
        loss = backbone(x).sum()  # a fine-tuning step: the model itself, with gradients
    loss.backward()
    assert backbone.model.features[0][0].weight.grad is not None
