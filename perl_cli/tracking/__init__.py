"""Mechanistic tracking during training: spectra of adapter updates and gradient flow.

Imported only by the training worker (it needs torch); readers use the JSON files.
"""
