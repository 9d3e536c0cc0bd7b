"""The audit module that `accelerate launch` starts in each process for a multi-process audit:

    accelerate launch -m trl_robust.scripts.audit --model_name_or_path OUT --ref_model BASE --dataset_name DATA ...
"""

import sys

from trl_robust.cli.audit import main
from trl_robust.cli.orphans import die_with_launcher

if __name__ == "__main__":
    die_with_launcher()  # a rank of a multi-process audit ends with its launcher, even one killed by SIGKILL
    sys.exit(main(prog="python -m trl_robust.scripts.audit"))
