"""Lightweight multimodal self-supervised trainers over the feature store."""
