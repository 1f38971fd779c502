"""Caption tokens as ids into a word2vec vocabulary (GoogleNews .bin through gensim).

Tokenisation follows HowTo100M/MCN: regex [\\w']+, case kept, words missing from the vocabulary dropped
(no UNK). The store keeps token ids plus one matrix of the vectors actually used.
"""
from __future__ import annotations

import logging
import os
import re

import numpy as np

from .base import TEXT, Extractor, Options
from .weights import WeightsError, sha256

log = logging.getLogger("mmcache")
TOKEN = re.compile(r"[\w']+")


def tokenize(sentence: str) -> list[str]:
    return TOKEN.findall(str(sentence))


class Word2VecText(Extractor):
    """Caption -> token ids into the word2vec vocabulary (the store keeps ids and the used vectors)."""
    consumes = TEXT
    rate = None
    description = "gensim KeyedVectors.load_word2vec_format(binary=True)"

    def __init__(self, name: str, opts: Options):
        from gensim.models import KeyedVectors

        super().__init__(name, opts)
        path = self.weights = opts.weights_for(name)
        if not path or not os.path.isfile(path):
            raise WeightsError(f"word2vec: file not found: {path!r} (--word2vec PATH to a GoogleNews-style "
                               ".bin written by gensim save_word2vec_format(binary=True))")
        try:
            self.kv = KeyedVectors.load_word2vec_format(str(path), binary=True)
        except Exception as e:
            raise WeightsError(f"word2vec: cannot read {path} as a binary word2vec file: {e}") from e
        self.weights_sha256 = sha256(path)
        self.dim = self.kv.vector_size
        rows = self.kv.vectors[:: max(1, len(self.kv.vectors) // 10000)]
        self.mean_norm = float(np.linalg.norm(rows, axis=1).mean()) if len(rows) else 0.0
        if self.mean_norm < 0.5:
            log.warning("word2vec: the vectors in %s have mean norm %.3f (GoogleNews: about 2-3); nearly untrained "
                        "vectors carry almost no meaning, so text features will barely help", path, self.mean_norm)
        self.params = dict(tokenizer=r"[\w']+", case="kept", oov="dropped")

    def ids(self, sentence: str) -> list[int]:
        index = self.kv.key_to_index
        return [index[w] for w in tokenize(sentence) if w in index]

    def __call__(self, sentences) -> list[list[int]]:
        return [self.ids(s) for s in sentences]
