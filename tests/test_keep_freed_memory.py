"""`hardware.keep_freed_memory`: large blocks come from malloc's heap and are reused, instead of
a fresh mmap (and page faults) per block; every `histodetect` process sets it."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("glibc's mallopt is Linux only", allow_module_level=True)
try:
    ctypes.CDLL(None).mallinfo2  # noqa: B018 - glibc 2.33+
except AttributeError:
    pytest.skip("this libc has no mallinfo2 to check with", allow_module_level=True)

PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    from histodetect.hardware import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    kept = keep_freed_memory() if sys.argv[1] == "keep" else False
    block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MB, like a batch's activations
    mmapped = libc.mallinfo2().hblkhd
    del block
    heap = libc.mallinfo2().arena
    print(kept, mmapped >= 200 * 2**20, heap >= 200 * 2**20)
    """
)


def _probe(mode: str, **env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout  # fmt: skip
    return out.split()


def test_freed_large_blocks_stay_in_the_heap() -> None:
    # glibc's default: a 200 MB block is its own mmap, returned to the kernel on free.
    assert _probe("default") == ["False", "True", "False"]
    # Kept: the block comes from the heap, which keeps it after the free for the next one.
    assert _probe("keep") == ["True", "False", "True"]
    assert _probe("keep", HISTODETECT_KEEP_FREED_MEMORY="0") == ["False", "True", "False"]


def test_every_histodetect_process_keeps_freed_memory() -> None:
    """The command line sets it before any command runs (here `models`, which loads no data)."""
    command = "import sys; from histodetect.cli.main import main; sys.argv = ['histodetect', 'models']; main()"
    probe = PROBE.replace(
        'kept = keep_freed_memory() if sys.argv[1] == "keep" else False', command + "; kept = None"
    )
    assert probe != PROBE
    out = subprocess.run([sys.executable, "-c", probe, "cli"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split()[-2:] == ["False", "True"], "no mmap for the block; kept in the heap"


def test_a_setting_that_is_not_0_or_1_is_refused() -> None:
    """HISTODETECT_KEEP_FREED_MEMORY=no once left the memory kept: only 0 turned it off."""
    done = subprocess.run([sys.executable, "-m", "histodetect", "models"], capture_output=True,
                          text=True, env={**os.environ, "HISTODETECT_KEEP_FREED_MEMORY": "no"})  # fmt: skip
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert "HISTODETECT_KEEP_FREED_MEMORY='no' is not 0 or 1" in err and "set it to 0" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
