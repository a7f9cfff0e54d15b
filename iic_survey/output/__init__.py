"""The output catalog: a HATS collection of the classification, written resumably, exactly once;
its margin, id indexes and selection folder; the read API, validation and FITS/VOTable export.

Modules
-------
schema
    The catalog's format: its Arrow schema, column docs and the collection's file layout.
staging
    Setting up a run's output (``_run.json``, ``_plan.json``) and staging chunks of result rows.
commit
    Turning a work pixel's staged chunks into its sorted partition file(s) and done marker.
partitions
    Adaptive partitions: a dense work pixel written as its children, down to order 9.
strays
    Rows staged in one pixel but positioned in another, handed over to the pixel they lie in.
duplicates
    Exactly once across pixels: no ``cntr`` in two partition files.
finalize
    The main catalog's HATS metadata (``_metadata``, coverage maps, ``hats.properties``) last.
margin
    The margin catalog: each partition's neighbouring rows within a few arcseconds of its edge.
index
    Index catalogs on ``cntr`` and ``designation``: one source found by its id in one read.
hatsfiles
    The HATS metadata files, written with the ``hats`` library and put in place atomically.
metadata_stream
    A catalog's ``dataset/_metadata`` written one partition footer at a time, in flat memory.
selection_folder
    The catalog's ``selection/`` folder: the model's selection tables and sky masks (MOC).
reader
    Queries (cone, pixels, class, confidence, ids), pixel by pixel reads and a text summary.
validate
    Everything wrong with a catalog, as readable sentences.
export
    A selection as FITS or VOTable, units, descriptions, UCDs and the coordinate system kept.
"""
