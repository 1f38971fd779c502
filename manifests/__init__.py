"""Manifest readers: videos, clips and labels from CSV/JSON."""
