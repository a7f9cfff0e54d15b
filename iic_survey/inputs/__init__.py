"""The pipeline's inputs: the AllWISE source catalog and the Atlas images, wherever they are.

Everything here reads; nothing writes. Storage is local disk, ``memory://``, S3 or HTTPS alike,
so tests run on small local copies in the real layouts.

* :mod:`~iic_survey.inputs.catalog` -- the catalog: pixel and cone reads of IRSA's HEALPix Parquet.
* :mod:`~iic_survey.inputs.partitions` -- its partition files: layout, index, footers, file reads.
* :mod:`~iic_survey.inputs.footer_bytes` -- a ``_metadata``'s paths and counts, read in windows.
* :mod:`~iic_survey.inputs.allwise_schema` -- which catalog columns must exist, of what type.
* :mod:`~iic_survey.inputs.storage` -- fsspec filesystems, the Arrow bridge, refused access.
* :mod:`~iic_survey.inputs.tiles` -- the Atlas tile grid: centres, ids, tile search.
* :mod:`~iic_survey.inputs.tile_header` -- a tile's WCS and FITS header, computed from its id.
* :mod:`~iic_survey.inputs.archive` -- the tile store (local, S3, IBE): naming, opening, checks.
* :mod:`~iic_survey.inputs.ibe` -- IRSA's services: per-source IBE cutouts, SIA v2 tile look-up.
* :mod:`~iic_survey.inputs.retry` -- bounded, jittered retries and error-cause inspection.
* :mod:`~iic_survey.inputs.errors` -- the archive's error types.
"""
