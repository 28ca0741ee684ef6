"""The README's layout sketch stays true to the source tree, and every module says what it owns."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rsilab

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(rsilab.__file__).parent


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Layout\n.*?```\n(.*?)```", text, flags=re.S | re.M)
    assert m is not None, "README.md has no Layout section with a code block"
    return m.group(1)


def test_readme_layout_names_every_package_and_nothing_that_is_gone() -> None:
    block = _layout_block()
    packages = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
    missing = [name for name in packages if not re.search(rf"^\s+{name}/", block, flags=re.M)]
    assert not missing, f"README's layout sketch misses the packages {missing}"
    named = re.findall(r"^\s+([a-z_]+)/", block, flags=re.M)
    gone = [name for name in named if name not in packages]
    assert not gone, f"README's layout sketch names packages that do not exist: {gone}"
    modules = {p.name for p in PACKAGE.rglob("*.py")}
    for module in re.findall(r"\b([a-z_]+\.py)\b", block):  # the modules it names
        assert module in modules, f"README's layout names {module}, which is gone"


def test_every_module_has_a_docstring_that_says_what_it_owns() -> None:
    unowned = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "tasks" in path.relative_to(PACKAGE).parts:  # task code is the user's, not ours
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "Owns" not in doc and "owns" not in doc:
            unowned.append(str(path.relative_to(PACKAGE)))
    assert not unowned, f"modules whose docstring does not say what they own: {unowned}"
