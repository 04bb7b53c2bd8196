import os
import platform
import subprocess
import sys

import pytest

# in a fresh process: the allocator's state after other tests is not this test's to assume
FRAGMENT_THEN_TRIM = """
import os
import numpy as np
from twins.training import trim_heap

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

block = np.ones(30 * 2**17)  # freeing one 31 MB block raises glibc's mmap threshold to its size
del block
big, pins = [], []
for _ in range(40):  # 8 MB arrays now on the heap, each followed by a small live one: freed, they cannot merge
    big.append(np.ones(2**20))  # into the heap's top, so free() keeps them
    pins.append(np.ones(2**10))
del big
before = rss_mb()
trim_heap()
print(before - rss_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or "MALLOC_MMAP_THRESHOLD_" in os.environ,
                    reason="glibc's malloc_trim, with its dynamic mmap threshold")
def test_trim_heap_returns_fragmented_free_memory():
    out = subprocess.run([sys.executable, "-c", FRAGMENT_THEN_TRIM], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 200  # MB given back, of the 320 MB freed
