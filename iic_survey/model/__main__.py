"""``python -m iic_survey.model [--arch A]``: the size table of :mod:`iic_survey.model.size`."""

from __future__ import annotations

import sys

from iic_survey.model.size import cli

if __name__ == "__main__":
    sys.exit(cli())
