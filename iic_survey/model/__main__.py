"""``python -m iic_survey.model``: the model's command-line tools.

``python -m iic_survey.model [--arch A]``
    the size table of :mod:`iic_survey.model.size`;
``python -m iic_survey.model export-onnx MODEL_DIR OUT.onnx``
    the network and its calibration as ONNX (:mod:`iic_survey.model.onnx_export`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from iic_survey.model import onnx_export, size


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch: ``export-onnx`` or the size table."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "export-onnx":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return onnx_export.cli(args[1:])
    return int(size.cli(args))


if __name__ == "__main__":
    sys.exit(main())
