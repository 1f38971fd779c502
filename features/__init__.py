"""Frozen feature extractors: frame CNN, log-mel, DAVEnet, word2vec tokens."""
