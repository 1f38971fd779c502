"""Decode-once extraction into a resumable Zarr feature store."""
