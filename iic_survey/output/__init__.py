"""The output catalog: a HATS catalog of the classification, written resumably, exactly once.

Modules
-------
schema
    The catalog's format: its Arrow schema, column docs and file layout.
writer
    Setting up a run's output (``_run.json``, ``_plan.json``) and staging chunks of result rows.
commit
    Turning a pixel's staged chunks into its final, sorted file and done marker.
finalize
    The HATS metadata (``_metadata``, ``partition_info.csv``, ``hats.properties``) last.
reader
    Queries (cone, pixels, class, confidence), pixel by pixel reads and a text summary.
validate
    Everything wrong with a catalog, as readable sentences.
export
    A selection as FITS or VOTable, units and descriptions kept.
"""
