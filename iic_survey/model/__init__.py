"""The classifier: IICnet and its variants, their size, the model directory and OOD statistics.

It imports only :mod:`iic_survey.core`, so training and the survey share one definition.

* :mod:`~iic_survey.model.config` — the architecture, a frozen dataclass.
* :mod:`~iic_survey.model.network` — the networks (IICnet, fusion, colour), inference speed-ups.
* :mod:`~iic_survey.model.size` — parameter and MAC counts, the size table.
* :mod:`~iic_survey.model.directory` — saving and loading a trained model.
* :mod:`~iic_survey.model.ood` — a model over arrays; out-of-distribution statistics, scores.
* :mod:`~iic_survey.model.__main__` — ``python -m iic_survey.model``: print the size table.
"""
