"""The repository's scripts: set-up, demo, tests, mutations, instruction-set checks. Those that
import each other or the benchmarks run as modules from the repository root
(``python -m scripts.mutate``, ``python -m scripts.cross_isa``)."""
