"""Helpers that the tests and the benchmarks share (as ``hats.testing`` does for hats).

Nothing here imports pytest: the package needs no test dependency at run time.

- ``ray_head``: a real local Ray head, started and stopped on free ports.
- ``catalog``: fake result rows, written as a catalog the way the pipeline writes one.
- ``model``: tiny model configs and an untrained model directory.
- ``training``: a fake training set, and a model directory finalised from it without Ray Train.
"""
