"""The paper's experiments (Zhao et al. 2023, RAA 23 085010) rerun on the synthetic sky: Table
3's six comparison networks, the ablations and the error analysis (README.md)."""
