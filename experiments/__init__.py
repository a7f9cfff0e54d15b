"""Studies, apart from the speed benchmarks of ``benchmarks/``: what the model learns, not how
fast the code runs. ``paper`` reruns Zhao et al. 2023's experiments on the synthetic sky;
``quality`` measures accuracy, calibration and selection against catalog baselines. Each is run
as ``python -m experiments.<name>`` from the repository root and writes its sections of
``experiments/RESULTS.md`` (``--write-results``)."""
