"""Batch reprocessing (data releases and daytime catch-up) with the prompt path's own code."""
