"""The precision benchmarks: the plans on this CPU (``plans``: fp32, bf16, bf16-late, int8 and
the gate, native ISA and AVX2) and the sky pipeline end to end in bf16 vs fp32 with the stamp
split's cost (``split``). ``python -m benchmarks.precision plans|split [options]``."""
