"""Frame features from a Hugging Face vision model in a local folder (``save_pretrained`` layout; never
downloaded): the folder's own image processor (resize, crop, normalisation), then the model's image embedding
(the class named in its config.json; CLIP's projected ``image_embeds`` / ``get_image_features`` where it
has one, else its pooled output), L2-normalised per frame.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .base import FRAMES, TEXT, Extractor, Options
from .optional import require
from .weights import WeightsError


def folder_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 over a model folder's files (names and contents, in name order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


TOKENIZER_PROBE = "Cut 2 onions, THEN fry them at 180°C: naïve café-style ... don't stop!"


def tokenizer_sha256(tokenizer) -> str:
    """SHA-256 of what decides a tokenizer's ids: its vocabulary (token -> id) and the ids it gives a probe text
    (casing, accents, punctuation, digits, special tokens). Two folders that tokenise alike share it, whatever
    model weights they hold."""
    ids = tokenizer(TOKENIZER_PROBE)["input_ids"]
    return hashlib.sha256(json.dumps([sorted(tokenizer.get_vocab().items()), ids]).encode()).hexdigest()


def local_folder(name: str, opts: Options, needs: str) -> str:
    """The group's Hugging Face folder (``--weights NAME=FOLDER``), transformers quietened; never downloads."""
    transformers = require("transformers", f"the {name} group (a Hugging Face model)")

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder = opts.weights_for(name)
    if not folder or not Path(folder, "config.json").is_file():
        raise WeightsError(f"{name}: no Hugging Face model folder at {folder!r} (--weights {name}=FOLDER: a "
                           f"local folder written by save_pretrained, with config.json and {needs})")
    return folder


class HFVision(Extractor):
    consumes = FRAMES
    rate = 1.0
    preload = ("transformers",)

    def __init__(self, name: str, opts: Options):
        transformers = require("transformers", f"the {name} group (a Hugging Face model)")
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        super().__init__(name, opts)
        folder = self.weights = local_folder(name, opts, "an image processor")
        try:
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            arch = (AutoConfig.from_pretrained(folder, local_files_only=True).architectures or [None])[0]
            model = getattr(transformers, arch or "", AutoModel).from_pretrained(folder, local_files_only=True)
        except Exception as e:
            raise WeightsError(f"{name}: cannot load {folder} with transformers: {e}") from e
        self.model = model.eval().to(opts.device)
        self.weights_sha256 = folder_sha256(folder)
        with torch.inference_mode():
            self.dim = int(self._embed(self.processor(images=[np.zeros((8, 8, 3), np.uint8)],
                                                      return_tensors="pt")["pixel_values"]).shape[1])
        self.description = f"transformers {type(model).__name__} ({model.config.model_type}), image embedding"
        self.params = dict(fps=1, selection="ffmpeg fps filter", rotation="display matrix applied", decoder=opts.decoder,
                           short_side=opts.short_side, processor=self.processor.to_dict(), l2_normalize=True,
                           precision=opts.precision, dtype="float16")

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's image embedding: CLIP-style ``image_embeds`` / ``get_image_features``, else pooled output."""
        pixels = pixels.to(self.opts.device)
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=pixels)
        else:
            out = self.model(pixel_values=pixels)
        if isinstance(out, torch.Tensor):
            return out
        return out.image_embeds if getattr(out, "image_embeds", None) is not None else out.pooler_output

    @torch.inference_mode()
    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(frames), self.opts.batch_size):
            pixels = self.processor(images=list(frames[i:i + self.opts.batch_size]), return_tensors="pt")
            with self.autocast():
                y = self._embed(pixels["pixel_values"])
            out.append(torch.nn.functional.normalize(y.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class HFText(Extractor):
    """Captions through a Hugging Face text model in a local folder (e.g. all-MiniLM-L6-v2): the tokenizer's
    ids (kept for end-to-end text training) and the attention-masked mean of the last hidden states,
    L2-normalised (the sentence-transformers pooling), per clip."""
    consumes = TEXT
    rate = None
    max_length = 128

    def __init__(self, name: str, opts: Options):
        require("transformers", f"the {name} group (a Hugging Face model)")
        from transformers import AutoModel, AutoTokenizer

        super().__init__(name, opts)
        folder = self.weights = local_folder(name, opts, "a tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(opts.device)
        except Exception as e:
            raise WeightsError(f"{name}: cannot load {folder} with transformers: {e}") from e
        self.weights_sha256 = folder_sha256(folder)
        self.dim = int(self.model.config.hidden_size)
        self.description = f"transformers {type(self.model).__name__} ({self.model.config.model_type}), mean-pooled"
        self.tokenizer_sha256 = tokenizer_sha256(self.tokenizer)
        self.params = dict(pooling="attention-masked mean of the last hidden state", l2_normalize=True,
                           max_length=self.max_length, truncation=True, precision=opts.precision, dtype="float16")

    def provenance(self) -> dict:
        """Also the tokenizer's fingerprint, which an end-to-end text tower's tokenizer must match (outside
        ``params``: stores extracted before it was recorded still resume)."""
        return {**super().provenance(), "tokenizer_sha256": self.tokenizer_sha256}

    @torch.inference_mode()
    def __call__(self, sentences) -> tuple[np.ndarray, list[np.ndarray]]:
        """(embeddings (n, dim) float32, token ids per sentence, special tokens included)."""
        out, ids = [], []
        sentences = [str(s) for s in sentences]
        for i in range(0, len(sentences), self.opts.batch_size):
            enc = self.tokenizer(sentences[i:i + self.opts.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            mask = enc["attention_mask"]
            with self.autocast():
                hidden = self.model(**{k: v.to(self.opts.device) for k, v in enc.items()}).last_hidden_state.float()
            m = mask.to(hidden.device).unsqueeze(-1).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
            ids += [row[keep.bool()].numpy().astype(np.int32) for row, keep in zip(enc["input_ids"], mask)]
        return (np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)), ids
