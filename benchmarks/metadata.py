"""Driver memory of writing a catalog's ``_metadata``: ours (streamed) against hats', by size.

Finalize runs in the job's driver and reads one footer per partition. For each size it writes
that many small partitions of the output catalog's width (order 5: up to 12,288), then, in a
fresh process each, resets the peak RSS after the imports (``/proc/self/clear_refs``) and runs
:func:`iic_survey.output.hatsfiles.write_dataset_metadata` (streamed) or hats'
``write_parquet_metadata`` (every footer held). Prints the peak RSS and its ratio to the
smallest size's, with the load average. Run from the repository root::

    .venv/bin/python -m benchmarks.metadata --workdir DIR --sizes 100 12288
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from benchmarks import common

_PEAK = """
import json, re, sys
from hats.io import write_parquet_metadata
from upath import UPath
from iic_survey.output import hatsfiles
def kb(k):
    return int(re.search(k + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")
if sys.argv[2] == "ours":
    hatsfiles.write_dataset_metadata(UPath(sys.argv[1]))
else:
    write_parquet_metadata(sys.argv[1], output_path=sys.argv[1] + "_ref", create_thumbnail=True)
print(json.dumps(kb("VmHWM") / 1024))
"""


def peak_mb(root: pathlib.Path, how: str) -> float:
    done = subprocess.run([sys.executable, "-c", _PEAK, str(root), how], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    from iic_survey.output.schema import OUTPUT_SCHEMA
    from iic_survey.synthetic.partition_files import order_pixels, write_partition_files

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(common.workdir("metadata")))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 12288])
    ap.add_argument("--no-hats", action="store_true", help="skip hats' (GBs at 12,288)")
    ap.add_argument("--write-results", action="store_true", help="write its RESULTS section")
    args = ap.parse_args()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    columns = len(OUTPUT_SCHEMA) - 2  # plus _healpix_29 and an id: the output's width
    rows = []
    for n in args.sizes:
        root = pathlib.Path(args.workdir, f"p{n}")
        if not (root / "dataset").is_dir():
            write_partition_files(root, order_pixels(5, n), columns=columns, rows=3)
        hows = ("ours",) if args.no_hats else ("ours", "hats")
        rows.append({"partitions": n, **{h: peak_mb(root, h) for h in hows}})
        print(json.dumps(rows[-1]), flush=True)
    print(f"load before {load}, after " + " / ".join(f"{v:.2f}" for v in os.getloadavg()))
    lines = [
        f"{how}: peak at {rows[-1]['partitions']:,} = "
        f"{rows[-1][how] / rows[0][how]:.2f}x at {rows[0]['partitions']:,}"
        for how in rows[0]
        if how != "partitions"
    ]
    print("\n".join(lines))
    if args.write_results:
        write_results(rows, lines, columns)
    return 0


SECTION = "## Driver memory of _metadata (benchmarks/metadata.py)"


def write_results(rows: list[dict[str, float]], lines: list[str], columns: int) -> None:
    """The section: peak RSS per size and the ratios (goal: < 1.2x from 100 to 12,288)."""
    from benchmarks.results import write_section

    hows = [h for h in rows[0] if h != "partitions"]
    table = ["| partitions | " + " | ".join(f"{h} peak RSS (MB)" for h in hows) + " |",
             "|---:|" + "---:|" * len(hows)]  # fmt: skip
    table += [f"| {r['partitions']:,} | " + " | ".join(f"{r[h]:.0f}" for h in hows) + " |"
              for r in rows]  # fmt: skip
    text = "\n".join([
        SECTION, "",
        f"Finalize writes `_metadata` in the job's driver, one footer per partition ({columns} "
        "data columns, 3 rows each; a fresh process per run, peak reset after the imports). "
        "`ours` streams one footer at a time (`output/metadata_stream.py`); `hats` is "
        "`hats.io.write_parquet_metadata`, which holds them all. Goal (issue 25): the driver's "
        "peak at 12,288 pixels under 1.2x its 100-pixel value.", "",
        *table, "", *[f"- {line}" for line in lines], "",
    ])  # fmt: skip
    write_section(SECTION, text)


if __name__ == "__main__":
    sys.exit(main())
