"""Keyword spotting (the ``audio-classification`` task): WAV reading (``wav``, torch-free, used on the
device), and on the workstation the log-mel front end and the backbones (``frontend``, ``oww``,
``models``) and the training (``workstation``). See docs/architecture.md, "Audio classification"."""
