"""No module below the config hard-codes the Cityscapes label set: every class name, count and rare class comes
from ``data.labels``. Only the datasets' own table (data/tables.py) and the ToyCity generator, which draws
Cityscapes scenes and writes Cityscapes files, name Cityscapes classes."""

import io
import tokenize
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # the fast tier: python -m pytest -m unit (pyproject.toml, markers)

SRC = Path(__file__).resolve().parents[1] / "src" / "segsweep"
EXEMPT = {"data/tables.py", "data/toycity.py"}
CITYSCAPES = {"road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "terrain", "sky", "person", "rider", "car", "truck", "bus", "motorcycle", "bicycle"}  # "train" too
# generic to tell apart from the split's name


def literals(path: Path):
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.STRING, tokenize.NUMBER):
            yield tok


def test_no_module_names_cityscapes_classes_or_counts_them():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in EXEMPT:
            continue
        for tok in literals(path):
            value = tok.string.strip("\"'")
            if (tok.type == tokenize.NUMBER and tok.string == "19") or (tok.type == tokenize.STRING
                                                                        and value in CITYSCAPES):
                found.append(f"{rel}:{tok.start[0]}: {tok.string}")
    assert not found, "label-set facts hard-coded below the config:\n" + "\n".join(found)


def test_the_check_sees_a_planted_literal(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text('NUM = 19\nNAMES = ("road", "sky")\n# 19 in a comment is fine\n')
    toks = [t.string for t in literals(planted)]
    assert "19" in toks and '"road"' in toks and toks.count("19") == 1
