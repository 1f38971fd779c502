"""New text (step names, class names) as a trained run reads text: tokenised as the store's captions were
-- ids into the word2vec .bin the store recorded (its SHA-256 checked), or the run's Hugging Face
tokenizer for a run with --end-to-end-text -- and embedded by the run's model."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.store import FeatureStore


def text_input(cfg, store: FeatureStore, texts: list[str], word2vec: str | None = None,
               max_words: int | None = None):
    """``texts`` as the run's model takes text: word vectors (N, W, 300) (padding: zero rows; W: ``max_words``,
    default the run's --max-words), or (ids, mask) for a Hugging Face text tower."""
    max_words = max_words or cfg.max_words
    if getattr(cfg, "text_group", "word2vec") != "word2vec":
        return frozen_embeddings(store, cfg.text_group, texts)
    tower = getattr(cfg, "end_to_end_text", "")
    if tower:
        from features.optional import require

        require("transformers", "--end-to-end-text (a Hugging Face text tower)")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tower, local_files_only=True)
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=cfg.max_tokens, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()
    from features.base import Options
    from features.text import Word2VecText
    from features.weights import sha256

    record = store.groups.get("word2vec", {})
    path = word2vec or record.get("weights")
    if not path:
        raise KeyError(f"{store.path} records no word2vec file: pass --word2vec PATH (the .bin its captions were "
                       "tokenised with)")
    try:
        same = sha256(path) == record.get("weights_sha256")
    except OSError:
        raise FileNotFoundError(f"word2vec file {path} not found (recorded by {store.path}); pass --word2vec "
                                "PATH") from None
    if record.get("weights_sha256") and not same:
        raise ValueError(f"{path} is not the word2vec file {store.path} was tokenised with (SHA-256 differs); "
                         "pass that file with --word2vec")
    w2v = Word2VecText("word2vec", Options(weights=(("word2vec", str(path)),)))
    ids = [w2v.ids(t)[:max_words] for t in texts]
    out = np.zeros((len(texts), max_words, w2v.dim), np.float32)
    for i, row in enumerate(ids):
        out[i, :len(row)] = w2v.kv.vectors[row]
    unknown = [t for t, row in zip(texts, ids) if not row]
    if unknown:
        print(f"warning: {len(unknown)} of {len(texts)} texts have no word in the vocabulary (e.g. {unknown[0]!r}): "
              "they embed as empty captions")
    return torch.from_numpy(out)


def frozen_embeddings(store: FeatureStore, group: str, texts: list[str]) -> torch.Tensor:
    """(N, D) embeddings of new ``texts`` by the model that embedded the store's captions into ``group`` (the
    local folder its record names, checked by fingerprint), as the run's frozen text input."""
    from features.base import Options
    from features.hf import folder_sha256
    from features.registry import extractor

    record = store.groups.get(group, {})
    folder = record.get("weights")
    if not folder:
        raise KeyError(f"{store.path} records no model folder for text group {group!r}")
    try:
        same = folder_sha256(folder) == record.get("weights_sha256")
    except OSError:
        raise FileNotFoundError(f"{folder} (the {group} model {store.path} recorded) is not there") from None
    if record.get("weights_sha256") and not same:
        raise ValueError(f"{folder} is not the {group} model {store.path} was embedded with (fingerprint differs)")
    emb, _ = extractor(group, Options(weights=((group, str(folder)),)))(list(texts))
    return torch.from_numpy(np.asarray(emb, np.float32))


@torch.no_grad()
def embed_texts(model, cfg, store: FeatureStore, texts: list[str], word2vec: str | None = None,
                max_words: int | None = None) -> dict:
    """{space: (N, D) text embeddings} of every space of ``model`` that holds text."""
    out = model.embed(None, None, text_input(cfg, store, texts, word2vec, max_words))
    spaces = {s: e["t"].numpy() for s, e in out.items() if "t" in e}
    if not spaces:
        raise ValueError("this run has no space holding text (a combo with t, or MMV)")
    return spaces
