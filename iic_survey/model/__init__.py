"""The classifier: IICnet and its variants, their size, the model directory, OOD statistics,
inference on fixed-shape batches, precision plans (bf16, int8) and their gate, the ONNX export.

It imports only :mod:`iic_survey.core`, so training and the survey share one definition.

* :mod:`~iic_survey.model.config` — the architecture, a frozen dataclass.
* :mod:`~iic_survey.model.network` — the networks (IICnet, fusion, colour), inference speed-ups.
* :mod:`~iic_survey.model.size` — parameter and MAC counts, the size table.
* :mod:`~iic_survey.model.directory` — saving and loading a trained model (safetensors).
* :mod:`~iic_survey.model.ood` — a model over arrays; out-of-distribution statistics, scores.
* :mod:`~iic_survey.model.domain` — the training domain, and the ``subset`` label it gives a row.
* :mod:`~iic_survey.model.inference` — a model over a chunk on CPU or GPU (pinned buffers, one
  copy back per chunk), the GPU batch size from its free memory.
* :mod:`~iic_survey.model.precision` — ``--precision``: native-bf16 detection, autocast, and the
  gate a reduced precision passes against fp32 before a run uses it.
* :mod:`~iic_survey.model.quantized` — the ``int8`` plan: the image encoder quantized for x86
  CPUs, and the gate set.
* :mod:`~iic_survey.model.agreement` — what the gate measures: catalog agreement with a
  statistical bound, and speed.
* :mod:`~iic_survey.model.machine` — the machine's provenance: the CPU's usable instruction sets.
* :mod:`~iic_survey.model.onnx_export` — the network and its calibration as one ONNX graph.
* :mod:`~iic_survey.model.__main__` — ``python -m iic_survey.model``: print the size table;
  ``export-onnx MODEL_DIR OUT.onnx``.
"""
