"""Batches for training: one per step, a pure function of (seed, step), formed by ClipReader in DataLoader worker
processes beside the training process; and a batch's video and text as a model takes them."""
from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.processes import forkserver

from .clips import ClipSpec
from .data import ClipReader


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = the batch of that step: ``sample(reader, step)`` picks clip indices (a pure function
    of the step), the reader forms them. Each worker process opens the store itself."""

    def __init__(self, store: str, spec: ClipSpec, sample, seed: int = 0):
        self.path, self.spec, self.sample, self.seed = str(store), spec, sample, seed
        self._reader, self._pid = None, None

    def reader(self) -> ClipReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader, self._pid = ClipReader(self.path, self.spec), os.getpid()
        return self._reader

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        reader = self.reader()
        clips = self.sample(reader, step)
        augmented = self.spec.augment or self.spec.audio_gain_db
        rng = np.random.default_rng([self.seed, step, 2]) if augmented else None  # a function of the step
        return {"clips": clips, **reader.batch(clips, rng)}


def step_loader(store: str, spec: ClipSpec, sample, first: int, last: int, workers: int, pin: bool = False,
                seed: int = 0):
    """Batches for steps first..last-1, in order, formed by ``workers`` processes (0: in this process);
    ``pin``: page-locked batches, for non-blocking copies to a GPU; ``seed``: of the augmentations."""
    # its own generator: creating the loader must not draw from the global torch RNG (dropout, init). Workers
    # fork from a clean server process (pipeline/processes.py), never from this threaded one
    return torch.utils.data.DataLoader(StepBatches(store, spec, sample, seed), batch_size=None,
                                       sampler=range(first, last), num_workers=workers,
                                       prefetch_factor=4 if workers else None, persistent_workers=False,
                                       pin_memory=pin,
                                       multiprocessing_context=forkserver() if workers else None,
                                       generator=torch.Generator().manual_seed(0))


def default_workers() -> int:
    """Loader processes: one beside the training process where there is a spare core."""
    return 1 if (os.cpu_count() or 1) > 1 else 0


def video_input(b: dict, device, spec: ClipSpec):
    """A batch's video as the model takes it: pooled features, or (frames, count) for a video tower."""
    video = torch.as_tensor(b["video"]).to(device, non_blocking=True)
    return (video, torch.as_tensor(b["video_count"]).to(device)) if spec.frames_group else video


def text_input(b: dict, vectors: torch.Tensor, device, spec: ClipSpec):
    """A batch's text as the model takes it: word vectors, frozen sentence embeddings (B, D), or (token ids,
    mask) for a text tower."""
    if spec.text_embedding:
        return torch.as_tensor(b["text_emb"]).to(device, non_blocking=True)
    if spec.text_tokens:
        return (torch.as_tensor(b["words"]).to(device, non_blocking=True),
                torch.as_tensor(b["word_mask"]).to(device, non_blocking=True))
    # ``vectors`` lives on the model's device: a GPU gathers there, not from RAM (MCN's sizes: 98 MB a step)
    return vectors[torch.as_tensor(b["words"]).to(vectors.device, non_blocking=True)].to(device)
