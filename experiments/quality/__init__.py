"""The quality study: IICnet, fusion and colour-only models against catalog baselines on a
synthetic sky, their calibration per depth and the selection thresholds (README.md)."""
