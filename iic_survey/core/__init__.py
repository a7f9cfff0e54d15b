"""The bottom layer: pure functions and small values every other folder shares (HEALPix maths,
quality flags, metrics and calibration, the keyed hash, atomic writes, config helpers, default
paths, Parquet footers).

It imports nothing else of ours (import-linter checks it).

- ``constants``: the code version, the class names and the WISE bands the model sees.
- ``healpix``: HEALPix NESTED pixel maths and the coordinate-validity mask.
- ``flags``: the per-row quality bits of the output catalog.
- ``metrics``: classification metrics, calibration (temperature scaling) and reliability.
- ``calibration``: calibration at every depth, a temperature that is a smooth function of W1.
- ``hashing``: the one keyed hash of source ids (splits, balancing, example picking).
- ``atomic``: writing a file so that readers see all of it or nothing.
- ``config``: "did you mean" hints and configs from JSON dicts.
- ``paths``: the default locations under ``$IIC_SURVEY_HOME``.
- ``parquet_footer``: a Parquet footer's top-level Thrift fields, read and written as bytes.
- ``progress``: a progress bar on a terminal (nothing in a log).
- ``heap``: an inference worker keeps its freed memory (glibc's thresholds), so each pass
  reuses its pages.
"""
