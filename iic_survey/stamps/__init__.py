"""From catalog rows to model inputs: stamps cut from Atlas tiles, RGB images, catalog features.

Training and the sky pipeline both go through :class:`~iic_survey.stamps.maker.StampMaker`, so
what the model learns from is what it is asked about. The image maths is pure numpy; only the
cutter reads (through :mod:`iic_survey.inputs`).

* :mod:`~iic_survey.stamps.cutouts` -- cutting settings, the batch result, one image's stamps.
* :mod:`~iic_survey.stamps.cutter` -- a batch's stamps: choosing tiles, one read per tile and band.
* :mod:`~iic_survey.stamps.rgb` -- W1/W2/W3 stamps in DN -> the 80x80 three-channel images.
* :mod:`~iic_survey.stamps.features` -- the catalog colour features and photometry flags.
* :mod:`~iic_survey.stamps.maker` -- the stamp maker: rows in, images, features and flags out.
* :mod:`~iic_survey.stamps.split` -- the maker in two: stamps on the CPU, images next to the model.
* :mod:`~iic_survey.stamps.rgb_torch` -- the RGB transform as batched torch operations (GPU).
"""
