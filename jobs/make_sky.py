"""Write a synthetic WISE sky (catalog, Atlas tiles, truth) in the archive's own layout.

python jobs/make_sky.py data/sky                 # the demo sky: 10,000 sources, 4 fields
python jobs/make_sky.py data/train_sky --n-sources 30000 --field-size 0.7 --seed 1
python jobs/make_sky.py /tmp/tiny --tiny         # the 2,000-source test sky
python jobs/make_sky.py /tmp/sky_scale --preset sky-scale --scale 1e-4
                        # all 12,288 partitions, 74,763 rows, 300 columns: a whole-sky rehearsal
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from iic_survey.synthetic import cli


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the sky, print a summary; exit status 2 on bad arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_sky_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        manifest = cli.write_from_args(args)
    except (ValueError, FileExistsError) as exc:
        print(f"make_sky: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {manifest.n_sources} sources in {len(manifest.pixels)} order-5 pixels on "
        f"{len(manifest.tiles)} Atlas tiles to {manifest.root} "
        f"in {time.perf_counter() - start:.1f} s\n"
        f"  catalog: {manifest.catalog_url}\n"
        f"  images:  {manifest.images_url}\n"
        f"  truth:   {manifest.root}/truth.parquet"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
