"""The synthetic WISE sky: a seeded, realistic sky in the archive's own formats.

With no network, every code path (catalog reads, tile cutouts, training, the classification
run) still runs on a fresh machine against a sky written here: a hive-partitioned AllWISE-like
catalog, Atlas-like FITS tile crops, a separate truth table and ``sky.json``
(docs/design.md §2).

Modules
-------
population
    What objects a field holds: classes, colours, shapes and realistic trouble.
rendering
    Field geometry, the band PSF/noise/saturation models, and drawing sources into tile crops.
catalog
    The catalog rows AllWISE would list (photometry, flags, ids), its schema and Parquet files.
skyfiles
    The writer: :class:`~iic_survey.synthetic.skyfiles.SkyConfig`, ``write_sky`` and the manifest.
skyscale
    The sky-scale rehearsal sky: all 12,288 partitions at a fraction of AllWISE's density.
allwise_columns
    AllWISE's full 300-column set, for files and a ``_metadata`` of the real width.
metadata_file
    Writing a ``_metadata`` one partition at a time, in flat memory.
partition_files
    Many small HATS-shaped partition files (``_metadata`` memory checks).
cli
    The ``make-sky`` command line, shared with ``jobs/make_sky.py``.
"""
