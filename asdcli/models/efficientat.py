"""EfficientAT MobileNetV3 audio tagger (Schmid et al., "Efficient large-scale audio tagging via
transformer-to-CNN knowledge distillation", ICASSP 2023): a small AudioSet model a CPU can
fine-tune. Written for this project from the published architecture; its module and tensor names
follow the authors' checkpoints (torchvision's ``mobilenet_v3_large`` layout, squeeze-excitation
under ``conc_se_layers.0``), so their weights load as they are.

Input: mono audio at 32 kHz -> pre-emphasis -> |STFT|^2 (n_fft 1024, Hann window of 800,
hop 320, centred) -> 128 Kaldi-style mel bands 0-15 kHz -> log(mel + 1e-5) -> (x + 4.5) / 5.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

FRONTEND_VERSION = 2  # 2: 16 kHz audio on the model's grid (no resampling); part of cached embeddings' key
RATE = 32000
N_FFT, WINDOW, HOP, N_MELS, F_MAX = 1024, 800, 320, 128, 15000.0
N_CLASSES = 527
# (kernel, expanded, out, squeeze-excitation, hardswish, stride) of MobileNetV3-large before the width multiplier
BLOCKS = [(3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
          (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
          (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
          (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
          (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1)]


def divisible(value: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding: the nearest multiple of ``divisor``, never 10 % below."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
          act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias), batch norm and an optional activation: keys ``0`` and ``1``."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                               _bn(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def folded_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each batch norm folded into the convolution before it
    and in the channels-last layout: the same function (to float rounding), about 3x faster on a
    CPU. Only for inference: the copy's batch norms are gone."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    return folded.requires_grad_(False).to(memory_format=torch.channels_last)


class SqueezeExcitation(nn.Module):
    """Channel attention: mean over (mels, frames) -> fc1, ReLU, fc2, hard sigmoid -> a scale per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, divisible(channels / 4))
        self.fc2 = nn.Linear(divisible(channels / 4), channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))  # (B, C)
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """The authors' wrapper around their squeeze-excitation layers (one, on channels, here)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (k x k, stride), squeeze-excitation, project (1x1); a residual
    connection where the shape allows. Keys ``block.<i>``."""

    def __init__(self, c_in: int, kernel: int, expanded: int, c_out: int, se: bool, hardswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_conv(c_in, expanded, 1, act=act))
        layers.append(_conv(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(ConcurrentSE(expanded))
        layers.append(_conv(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MelFrontend(nn.Module):
    """(B, samples) audio -> (B, 1, 128, frames) log-mel as the model was trained on (at 32 kHz).

    Audio at 16 kHz (asd's rate) is not resampled: the same grid is computed at its own rate
    (FFT of 512 over a 400-sample window, hop 160: the same 31.25 Hz bins and 10 ms frames as the
    model's) and what resampling to 32 kHz and the pre-emphasis would do to each bin's power is
    applied as their frequency response (the pass band's gain, the roll-off below 8 kHz and the
    attenuated mirror image above it). Far cheaper than resampling and a twice longer STFT; the
    embeddings of real clips stay close to the resampled route's (tests/models/test_efficientat.py)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mel", _kaldi_mel_banks(), persistent=False)  # (128, 513)

    def forward(self, wave: Tensor, rate: int = RATE) -> Tensor:
        step = RATE // rate if rate <= RATE and RATE % rate == 0 else None
        if step is None:
            wave, step = AF.resample(wave, rate, RATE), 1
        n_fft, window, hop = N_FFT // step, WINDOW // step, HOP // step
        if step == 1:
            x = wave[:, 1:] - 0.97 * wave[:, :-1]  # pre-emphasis
        else:  # one sample shorter, as the pre-emphasised 32 kHz signal: the same number of frames
            x = wave[:, :-1]
        spec = torch.stft(x, n_fft, hop, window, torch.hann_window(window, periodic=False, device=wave.device),
                          center=True, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (B, n_fft / 2 + 1, frames)
        if step == 2:  # zero-stuffing mirrors the spectrum above the old Nyquist; the filter attenuates it
            power = torch.cat([power, power.flip(1)[:, 1:]], dim=1)  # (B, 513, frames)
            power = power * _route_gain(step, power.shape[1]).to(power)[None, :, None]
        elif step > 2:
            power = power * _route_gain(step, power.shape[1]).to(power)[None, :, None]
        mel = torch.matmul(self.mel[:, : power.shape[1]], power)  # (B, 128, frames)
        return ((mel + 1e-5).log() + 4.5).div(5.0)[:, None]


@functools.lru_cache(maxsize=4)
def _route_gain(step: int, bins: int) -> Tensor:
    """(bins,) |H(f)|^2 of what the 32 kHz route does to audio at 32000 / ``step`` Hz before its
    STFT: torchaudio's resampling filter (its gain, ``step`` in the pass band, its roll-off below
    the old Nyquist frequency and what it leaves of the mirrored spectrum above it) and the
    pre-emphasis, at the FFT bins (31.25 Hz apart)."""
    impulse = torch.zeros(256, dtype=torch.float64)
    impulse[128] = 1.0
    response = AF.resample(impulse, RATE // step, RATE)  # (512,) the filter at 32 kHz
    spectrum = torch.fft.rfft(response, n=N_FFT).abs() ** 2  # (513,) on the model's FFT grid
    freqs = torch.arange(N_FFT // 2 + 1, dtype=torch.float64) * (RATE / N_FFT)
    emphasis = (1 - 0.97 * torch.exp(-2j * math.pi * freqs / RATE)).abs() ** 2
    return (spectrum * emphasis)[:bins].float()


def _kaldi_mel_banks() -> Tensor:
    """(128, 513) Kaldi mel triangles from 0 to 15 kHz over the 512 FFT bins, zero for the last."""
    from torchaudio.compliance.kaldi import get_mel_banks

    banks, _ = get_mel_banks(N_MELS, N_FFT, float(RATE), 0.0, F_MAX, 100.0, -500.0, 1.0)
    return F.pad(banks, (0, 1))


@dataclass
class TaggerOutput:
    """``logits`` (B, 527) AudioSet tags, ``embedding`` (B, C) pooled features of the last conv."""

    logits: Tensor
    embedding: Tensor


class MobileNetAudio(nn.Module):
    """EfficientAT's ``mn`` models: width 0.4 is mn04 (~1 M parameters, 384-d embedding)."""

    def __init__(self, width: float = 0.4, n_classes: int = N_CLASSES):
        super().__init__()
        c_first = divisible(16 * width)
        layers: list[nn.Module] = [_conv(1, c_first, 3, 2, act=nn.Hardswish)]
        c_in = c_first
        for kernel, expanded, c_out, se, hardswish, stride in BLOCKS:
            c_out, expanded = divisible(c_out * width), divisible(expanded * width)
            layers.append(InvertedResidual(c_in, kernel, expanded, c_out, se, hardswish, stride))
            c_in = c_out
        self.dim = divisible(960 * width)
        layers.append(_conv(c_in, self.dim, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = divisible(1280 * width)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.dim, hidden),
                                        nn.Hardswish(), nn.Dropout(0.2), nn.Linear(hidden, n_classes))
        self.frontend = MelFrontend()

    @property
    def blocks(self) -> int:
        """Feature blocks (the first conv, the inverted residuals and the last conv)."""
        return len(self.features)

    def forward_mel(self, mel: Tensor) -> TaggerOutput:
        """(B, 1, 128, frames) log-mel -> :class:`TaggerOutput`."""
        h = self.features(mel)  # (B, C, M', T')
        return TaggerOutput(self.classifier(h), h.mean(dim=(2, 3)))

    def mel(self, wave: Tensor, rate: int) -> Tensor:
        """(B, samples) audio at ``rate`` -> (B, 1, 128, frames) model input."""
        return self.frontend(wave, rate)

    def forward(self, wave: Tensor, rate: int) -> TaggerOutput:
        return self.forward_mel(self.mel(wave, rate))
