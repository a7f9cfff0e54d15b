"""Helpers that the tests and the benchmarks share (as ``hats.testing`` does for hats).

``ray_head`` starts and stops a real local Ray head on free ports; ``catalog`` makes fake
result rows and writes them as a catalog; ``model`` holds tiny model configs and writes an
untrained model directory; ``training`` writes a fake training set. Nothing here imports
pytest: the package needs no test dependency at run time.
"""
