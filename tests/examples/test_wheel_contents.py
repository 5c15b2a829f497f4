"""The wheel carries what docs/install.md sends pip users to: the examples (as
``exfm_plugin.examples``) and the Apache-2.0 LICENSE, declared in its metadata."""
import glob
import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wheel_ships_the_examples_and_the_license(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), REPO], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "exfm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        license_name = next(n for n in names if n.endswith("/LICENSE") and ".dist-info/" in n)
        license_text = z.read(license_name).decode()
    shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith("exfm_plugin/examples/")}
    in_checkout = {f for f in os.listdir(os.path.join(REPO, "exfm_plugin", "examples")) if f.endswith(".py")}
    assert {"quickstart.py", "student_in_fuxictr.py", "__init__.py"} <= shipped and in_checkout <= shipped
    # every examples/*.py of a checkout is a pointer to a shipped file of the same name
    assert {f for f in os.listdir(os.path.join(REPO, "examples")) if f.endswith(".py")} <= shipped
    assert "run_expid.py" in shipped
    assert "License: Apache-2.0" in metadata.splitlines() or "License-Expression: Apache-2.0" in metadata
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        assert license_text == f.read()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
