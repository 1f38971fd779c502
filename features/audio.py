"""Log-mel spectrogram with the AVLnet/DAVEnet front end (roudimit/AVLnet audio_to_spectrograms.py).

16 kHz mono, -4 dB gain, DC removal, pre-emphasis 0.97, 25 ms symmetric Hamming window (n_fft 400),
10 ms hop, centred reflect-padded STFT, power, 40 Slaney mel bins from 20 Hz to 8 kHz,
dB relative to the per-video maximum with an 80 dB floor. Output (frames, 40), 100 frames/s.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio

from .base import AUDIO, Extractor, Options

PARAMS = dict(sample_rate=16000, n_fft=400, win_length=400, hop_length=160, n_mels=40, f_min=20.0,
              f_max=8000.0, window="hamming(symmetric)", preemphasis=0.97, gain_db=-4.0, top_db=80.0,
              ref="max", frames_per_second=100)


@functools.lru_cache(maxsize=1)
def _mel() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=400, win_length=400, hop_length=160, f_min=20.0, f_max=8000.0, n_mels=40,
        window_fn=functools.partial(torch.hamming_window, periodic=False), power=2.0, center=True,
        pad_mode="reflect", norm="slaney", mel_scale="slaney")


FLOOR_DB = -PARAMS["top_db"]  # the log-mel's lowest value (dB re the video's max): silence


def power_to_db(power: torch.Tensor, amin: float = 1e-10, top_db: float = 80.0) -> torch.Tensor:
    """librosa.power_to_db(S, ref=np.max, top_db=80)."""
    db = 10.0 * torch.log10(power.clamp(min=amin))
    db = db - 10.0 * torch.log10(power.max().clamp(min=amin))
    return torch.maximum(db, db.max() - top_db)


@torch.inference_mode()
def logmel(wave: np.ndarray) -> np.ndarray:
    y = torch.as_tensor(wave, dtype=torch.float64) * 10 ** (PARAMS["gain_db"] / 20)
    if y.numel() <= 200:  # AVLnet pads empty audio to zeros(200); the centred reflect padding needs > 200
        y = torch.nn.functional.pad(y, (0, 201 - y.numel()))
    y = y - y.mean()
    y = torch.cat([y[:1], y[1:] - PARAMS["preemphasis"] * y[:-1]]).float()
    return power_to_db(_mel()(y)).T.contiguous().numpy()


class LogMel(Extractor):
    consumes = AUDIO
    dim, rate = 40, 100.0
    description = "torchaudio MelSpectrogram, AVLnet/DAVEnet front end"

    def __init__(self, name: str, opts: Options):
        super().__init__(name, opts)
        self.params = dict(PARAMS, dtype="float16")

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        return logmel(wave)
