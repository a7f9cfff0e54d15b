"""The bottom layer: pure functions and small values every other folder shares.

It imports nothing else of ours (import-linter checks it).

- ``constants``: the code version, the class names and the WISE bands the model sees.
- ``sky``: HEALPix NESTED pixel maths and the coordinate-validity mask.
- ``flags``: the per-row quality bits of the output catalog.
- ``metrics``: classification metrics, calibration (temperature scaling) and reliability.
- ``hashing``: the one keyed hash of source ids (splits, balancing, example picking).
- ``atomic``: writing a file so that readers see all of it or nothing.
- ``config``: "did you mean" hints and configs from JSON dicts.
- ``paths``: the default locations under ``$IIC_SURVEY_HOME``.
- ``progress``: a progress bar on a terminal (nothing in a log).
"""
