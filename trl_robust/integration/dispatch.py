"""Derive the robust trainer's loss method from the installed TRL: TRL's own code plus one branch.

Why this exists. TRL has no hook for new DPO loss types: `DPOTrainer._compute_loss` (a private method of
~300 lines) runs the policy and reference forward passes, builds `chosen_scores`/`rejected_scores`, then
loops over `self.loss_types` through an if/elif chain that ends in ``else: raise ValueError("Unknown loss
type ...")``. Copying that method would freeze one TRL version's forward, reference and metrics code into
this package and drift silently as TRL changes it (it changed three times in 1.13–1.15). Instead we take
the installed method's source and replace only the final ``raise`` with one call:

    else:
        per_sequence_loss = self._registered_per_sequence_loss(
            loss_type, chosen_scores, rejected_scores, ref_chosen_logps, ref_rejected_logps, mode
        )

Everything else — tokenisation, forward passes, live/precomputed/PEFT reference, f-divergence scores, WPO
weighting, `ld_alpha`, `loss_weights`, MoE aux loss, metrics — is TRL's code, byte for byte, and every
built-in loss type runs exactly as in stock TRL (the parity tests prove it).

Safety rules:
- The structure we rely on is checked by `trl_robust.compat` (the loss loop, the final raise, the local names we
  read, no zero-argument ``super()``); if the installed TRL differs, `IncompatibleTRLError` names what changed and
  the supported range. There is no silent fallback.
- The derived source keeps TRL's line numbers (the replacement is padded to the lines it replaces) and is
  registered with `linecache`, so tracebacks show real lines.
- It runs in the namespace of TRL's `dpo_trainer` module, so TRL's imports resolve as in TRL.
"""

import linecache
import sys
import textwrap

from .. import compat

HOOK_METHOD = "_registered_per_sequence_loss"


def derive_compute_loss(method=None, qualname: str = "RobustDPOTrainer._compute_loss"):
    """`method` (default: the installed TRL's `DPOTrainer._compute_loss`) with its final ``raise`` replaced by
    a call to `self._registered_per_sequence_loss`.

    The result is named after the class it is installed on (`__module__`, `__qualname__`), so profilers and
    tracebacks point at trl-robust, while its code object keeps TRL's file and line numbers (in `linecache`).
    Raises `IncompatibleTRLError` if `method` lacks the structure the branch relies on.
    """
    import trl

    if method is None:
        method = compat._installed_compute_loss()
        loop = compat.installed_loss_loop()
    else:
        loop = compat.analyse(method)
    source = textwrap.dedent("".join(loop.lines)).splitlines(keepends=True)
    start, end = loop.final_raise.lineno - 1, loop.final_raise.end_lineno  # 0-based slice of the raise statement
    indent = source[start][: len(source[start]) - len(source[start].lstrip())]
    call = f"{indent}per_sequence_loss = self.{HOOK_METHOD}(loss_type, {', '.join(compat.NAMES_READ)})\n"
    # Pad with blank lines so every later line keeps its number in TRL's file (readable tracebacks).
    source[start:end] = [call] + ["\n"] * (end - start - 1)
    text = "\n" * (loop.first_line - 1) + "".join(source)

    module = sys.modules[method.__module__]
    filename = f"<trl_robust.integration.dispatch: {module.__file__} (trl {trl.__version__}) with registered losses>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict = {}
    # TRL's module globals, so `torch`, `F`, `use_adapter`, ... resolve exactly as in TRL; the def lands in
    # `namespace`, not in TRL's module.
    exec(compile(text, filename, "exec"), module.__dict__, namespace)
    fn = namespace["_compute_loss"]
    fn.__module__ = "trl_robust.integration.trainer"
    fn.__qualname__ = qualname
    fn.__doc__ = (
        "TRL's `DPOTrainer._compute_loss` with one extra branch for registered loss types "
        "(derived from the installed TRL by `trl_robust.integration.dispatch`)."
    )
    return fn
