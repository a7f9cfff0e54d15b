"""Training: labelled cutout sets, the Ray Train run, and the model directory it ends in.

Data preparation lives apart from training: a training set is built once (labels, balance,
splits, stamps) and written as Parquet; a run streams it through Ray Train workers, then
calibrates and reports on the best checkpoint.

- ``labels``: label sources (synthetic truth or SDSS x AllWISE), cut their stamps, write a set.
- ``sdss``: SDSS DR17 spectroscopic classes from SkyServer, paged by RA stripe.
- ``crossmatch``: the HEALPix-partitioned positional match of labels onto AllWISE sources.
- ``splits``: class balancing and the train / val / test split, by keyed hashes of the ids.
- ``trainingset``: the training set on disk (Parquet per split + manifest), written atomically.
- ``config``: ``TrainConfig`` and ``RunSettings``, and the training job's options.
- ``loop``: the per-worker Ray Train loop (schedule, augmentation, precision, checkpoints).
- ``checkpoints``: reading a checkpoint's state and history; the best checkpoint of a run.
- ``trainer``: the driver: datasets, the ``TorchTrainer``, resuming, then finalising.
- ``evaluate``: the best checkpoint on the held-out splits: ``T(W1)``, the test report.
- ``finalize``: calibration, the test report, OOD statistics, the model directory.
- ``selection_tables``: completeness, purity, thresholds and reliability from a labelled split.
- ``card``: the model card (``README.md`` of the model directory) from the measured numbers.
- ``plots``: the report's PNG figures (history, ROC, confusion matrix).
"""
