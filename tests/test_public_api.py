"""The package's public API resolves lazily; importing it loads no heavy library."""

import subprocess
import sys

import histodetect


def test_every_public_name_resolves() -> None:
    for name in histodetect.__all__:
        assert getattr(histodetect, name) is not None, name


def test_import_is_light() -> None:
    code = "import sys, histodetect; print(any(m in sys.modules for m in ('torch', 'lightning', 'h5py')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
