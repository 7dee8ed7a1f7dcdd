"""The methods SAeUron is compared against: ESD-x and UCE weight edits (``erasure``), the
UnlearnDiffAtk-style soft-prompt attack (``attack``), and one interface through which every
removal method, SAeUron included, is prepared and applied (``methods``).

The general library never imports this package; the benchmark and the explorer do.
"""
