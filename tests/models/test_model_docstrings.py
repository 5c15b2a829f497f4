"""Every model class documents each constructor argument in a FuxiCTR-style ``Args:`` block."""
import ast
import inspect
import re

import pytest

from exfm_plugin.distill import ExFMStudent
from exfm_plugin.models import MODEL_REGISTRY

CLASSES = [MODEL_REGISTRY[n] for n in ("FM", "FmFM", "DeepFM", "DCN", "DCNv2", "DMIN", "MultiTaskDMIN")] + [ExFMStudent]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_args_block_names_every_constructor_argument(cls):
    doc = inspect.getdoc(cls) or ""
    assert "\nArgs:\n" in doc, f"{cls.__name__} has no Args block"
    args_block = doc.split("\nArgs:\n", 1)[1]
    documented = set(re.findall(r"^    (\*{0,2}\w+)(?: \(|:)", args_block, flags=re.M))
    signature = inspect.signature(cls.__init__).parameters.values()
    expected = {("**" if p.kind is p.VAR_KEYWORD else "") + p.name for p in signature if p.name != "self"}
    assert expected <= documented, f"{cls.__name__} leaves {sorted(expected - documented)} undocumented"
    defaults = {p.name: p.default for p in signature if p.default is not inspect.Parameter.empty}
    for name, default in defaults.items():  # a documented default is the signature's
        entry = re.search(rf"^    {name} \(.*?(?=^    \S|\Z)", args_block, flags=re.M | re.S)
        stated = entry and re.search(r"Default: ``(.+?)``", entry.group(0).replace("\n", " "))
        if stated and isinstance(default, (int, float, str, list, tuple, type(None))):
            assert ast.literal_eval(stated.group(1)) == default, (cls.__name__, name, stated.group(1), default)
