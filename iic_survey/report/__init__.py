"""The catalog's visual report: sky maps, confidence, example cutouts, truth metrics (Markdown).

Modules
-------
config
    The report's config, the columns it reads, class colours and figure sizes.
tally
    The counts accumulated pixel file by pixel file, and metrics against a truth table.
figures
    Sky maps, cutout grids and PNG saving (matplotlib object API, no pyplot).
examples
    Example cutouts from an image archive, made the way the pipeline makes its inputs.
selection_section
    The selection section: calibration per depth, completeness and purity against W1.
zoom
    Zoomed sky panels for a catalog that covers little of the sky.
sections
    ``write_report``: the report's Markdown sections and their figures.
cutouts
    Any sources' W1/W2/W3 stamps (FITS with WCS) and RGB images: ``python -m iic_survey cutouts``.
cli
    ``python -m iic_survey report``.
"""
