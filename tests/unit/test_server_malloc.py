"""`prisn.server.tune_malloc`: large buffers keep being mmapped (and so returned on free)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, sys
from prisn.server import tune_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
tuned = tune_malloc() if sys.argv[1] == "tune" else None
big = bytearray(4 << 20)  # an mmapped chunk; freeing it raises glibc's moving threshold
del big
before = libc.mallinfo2().hblks
buf = bytearray(1 << 20)  # a replay's Apply frame, an AppendEntries of 1 MiB
print(tuned, libc.mallinfo2().hblks - before)
"""


def _run(arg: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, arg], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, **env},
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    tuned, mmapped = out.stdout.split()
    return tuned, int(mmapped)


glibc = pytest.mark.skipif(not hasattr(os, "confstr") or sys.platform != "linux"
                           or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")


@glibc
def test_a_large_buffer_is_mmapped_after_a_larger_one_was_freed() -> None:
    assert _run("tune") == ("True", 1)
    # companion: glibc's default moved the threshold, the buffer came from the heap
    assert _run("plain") == ("None", 0)


@glibc
def test_an_operator_choice_is_left_alone() -> None:
    assert _run("tune", MALLOC_MMAP_THRESHOLD_="8388608") == ("False", 0)
