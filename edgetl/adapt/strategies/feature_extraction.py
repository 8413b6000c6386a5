"""Feature extraction: the frozen backbone's cached features and the head trained on them (phase 1,
which every strategy runs) are the whole training; nothing follows."""

from __future__ import annotations

from edgetl.adapt.strategies import Strategy


class FeatureExtraction(Strategy):
    description = "frozen backbone, cached features, new head."
