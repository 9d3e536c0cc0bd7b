"""trl-robust inside TRL: the loss branch derived from TRL's own `_compute_loss` (`dispatch`), the trainer that uses it
(`trainer`), and `patch_trl` (`patching`). Everything TRL-private lives here and in `trl_robust.compat`'s probe."""
