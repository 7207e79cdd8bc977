"""The README's Python section names what exists: every import in its code blocks resolves."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_readme_import_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    imports = [m for block in blocks for m in re.findall(r"^from (rankadaptor[\w.]*) import ([\w, ]+)$", block, re.M)]
    assert len(imports) >= 6
    for module, names in imports:
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"README imports {name} from {module}, which has no such name"
