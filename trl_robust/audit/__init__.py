"""Noisy-pair audit: which preference labels a trained policy probably disagrees with.

    from trl_robust.audit import audit_preferences
    result = audit_preferences(model, dataset, ref_model=..., output_dir=...)

`checks` and `models` refuse bad input before any model loads, `loading` reads a dataset named as `--dataset_name`,
`scoring` computes each pair's margin through TRL's own evaluation pass (`policy`, `reward`), `twins` gives identical
pairs one score, `metrics` ranks it against a flip record, `report` writes the files, `result` holds what was found and
cleans. The command is `trl-robust audit` (`trl_robust.cli.audit`).
"""

from .checks import AuditInputError
from .metrics import TOP_FRACTIONS, auroc, average_ranks, flip_metrics, precision_at_k
from .report import OUTPUT_FILES
from .result import CLEAN_MODES, DEFAULT_FLIP_COLUMN, AuditResult
from .scoring import audit_preferences

__all__ = [
    "CLEAN_MODES",
    "DEFAULT_FLIP_COLUMN",
    "OUTPUT_FILES",
    "TOP_FRACTIONS",
    "AuditInputError",
    "AuditResult",
    "audit_preferences",
    "auroc",
    "average_ranks",
    "flip_metrics",
    "precision_at_k",
]
