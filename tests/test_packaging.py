"""The embedded hub ships inside the wheel, and the installed package finds it there."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_embedded_hub(tmp_path):
    out = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path),
                          str(ROOT)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("attnzoo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    assert "attnzoo/weights/manifest.json" in names
    for record in manifest["checkpoints"].values():
        assert f"attnzoo/weights/{record['file']}" in names
    for package in ("layers", "kernels", "zoo", "data"):
        assert any(n.startswith(f"attnzoo/{package}/") and n.endswith(".py") for n in names), package
