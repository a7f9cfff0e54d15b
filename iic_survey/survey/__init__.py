"""The classification run: AllWISE rows -> stamps -> IICnet -> a HATS catalog, on Ray Data.

* :mod:`~iic_survey.survey.config` — a run's settings (a frozen dataclass) and its errors.
* :mod:`~iic_survey.survey.plan` — the driver's plan: pixels, their row counts, read units.
* :mod:`~iic_survey.survey.classify` — the inference actor and the pure logits-to-rows step.
* :mod:`~iic_survey.survey.stages` — the Ray Data stages and the lazy dataset chaining them.
* :mod:`~iic_survey.survey.run` — drive a run: plan, stream, commit pixels, finalize.
* :mod:`~iic_survey.survey.progress` — progress lines: done/total, rate, time left.
"""
