"""ROPO's noisy-sample filter (Liang et al., ICML 2025, arXiv 2404.04102), all in one package:

- `rules`: which pairs to distrust and what to do with them (pure functions of the margins);
- `auto`: `ropo_filter_ratio: auto`, the share to distrust from the estimated flip rate (pure);
- `settings`: the `ropo_filter_*` config fields, how they are read and validated;
- `trainer`: the mixin a trainer's loss calls through its one entry point, `_ropo_filter_batch`;
- `state`: the callbacks that decide per step or epoch and save the filter's state with checkpoints;
- `columns`: the dataset columns the filter carries through TRL's collator (row index, flip record).

Nothing is imported here, so that the pure modules load without transformers or datasets.
"""
