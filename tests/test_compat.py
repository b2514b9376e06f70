"""segsweep.compat holds every private name of another library that segsweep uses: each still exists in the
installed versions, and no other module of segsweep reaches into one."""

import io
import re
import tokenize
from importlib.metadata import version
from pathlib import Path

import pytest

from segsweep import compat

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.unit


def test_every_private_name_the_adapter_uses_still_exists():
    gone = compat.missing()
    installed = {name: version(name) for name in compat.WRITTEN_FOR}
    assert not gone, (f"src/segsweep/compat.py uses private names that the installed libraries no longer have: "
                      f"{gone}; installed {installed}, the adapter was written for {compat.WRITTEN_FOR}: adapt "
                      f"segsweep/compat.py (only that file) to the new release")


# A private name of another library: ``x._name`` on an object not our own, or an import of a ``_module``.
PRIVATE_ATTR = re.compile(r"\b(?!self\b|cls\b)[A-Za-z_]\w*\._[a-z]\w*")
PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+(?!segsweep\b)[\w.]*\b_[a-z]\w*", re.M)


def code_of(path: Path) -> str:
    """The file's code with its strings and comments blanked out (a docstring may name a private name)."""
    lines = path.read_text().splitlines(keepends=True)
    for tok in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT):
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                line = lines[r - 1]
                a, b = (c0 if r == r0 else 0), (c1 if r == r1 else len(line.rstrip("\n")))
                lines[r - 1] = line[:a] + " " * (b - a) + line[b:]
    return "".join(lines)


def test_no_module_but_the_adapter_uses_another_librarys_private_names():
    files = [p for p in (ROOT / "src" / "segsweep").rglob("*.py") if p.name != "compat.py"]
    files += sorted(ROOT.glob("*.py"))
    ours = re.compile(r"^_\w+$")
    found = []
    for path in files:
        code = code_of(path)
        for m in PRIVATE_ATTR.finditer(code):
            owner = m.group(0).split(".")[0]
            if not ours.match(owner):  # our own module-level helpers (``_with(...)``) are fine
                found.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
        found += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}" for m in PRIVATE_IMPORT.finditer(code)]
    assert not found, "private names of other libraries outside segsweep/compat.py:\n" + "\n".join(found)


def test_the_grep_finds_a_private_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""study._storage in a docstring is fine"""\nx = study._storage.get_trial(1)  # a comment\n'
                     "from hydra._internal.core_plugins import x\n")
    code = code_of(probe)
    assert [m.group(0) for m in PRIVATE_ATTR.finditer(code)] == ["study._storage", "hydra._internal"]
    assert len(PRIVATE_IMPORT.findall(code)) == 1
