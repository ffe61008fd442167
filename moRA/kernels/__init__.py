"""Fast paths of the MoRA branch and merge, tuned for the CPU; each computes exactly what ``moRA.equations`` states
(tested against it). ``sharing``: the types that apply M once; ``blocks``: rope and decouple; ``merge``: in-place
``W += ΔW``. Which implementation runs where is decided in ``moRA.operators``."""
