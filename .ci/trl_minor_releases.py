"""Print the newest patch release of every TRL minor release inside trl_robust's supported range, oldest first.

Read from the package index pip is configured with (`pip index versions trl`), so a new patch release is picked up
without editing anything; the range is `trl_robust.compat.SUPPORTED_TRL`, the package's one definition of it.
"""

import re
import subprocess
import sys

from packaging.version import Version

from trl_robust.compat import SUPPORTED_TRL

listing = subprocess.run(
    [sys.executable, "-m", "pip", "index", "versions", "trl"], capture_output=True, text=True, check=True
).stdout
available = re.search(r"Available versions: (.*)", listing).group(1).split(", ")
newest_patch = {}
for version in map(Version, available):
    if SUPPORTED_TRL.contains(version) and not version.is_prerelease:
        key = version.release[:2]
        newest_patch[key] = max(newest_patch.get(key, version), version)
print(" ".join(str(newest_patch[key]) for key in sorted(newest_patch)))
