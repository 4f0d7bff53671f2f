"""The allocator setting that keeps training off the kernel's page-fault path (models.cpu_memory)."""

import platform
import resource

import numpy as np
import pytest
import torch

from models.cpu_memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_activation_memory_is_reused_not_faulted_in_again():
    assert keep_freed_memory()
    x = torch.from_numpy(np.ones((64, 32, 64, 64), np.float32))  # 32 MiB: over glibc's own mmap threshold
    for _ in range(3):
        (x * 2).sum()  # the first ones fault in; the heap keeps them afterwards
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        (x * 2).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Without it every product faults in all its 8192 pages again (measured: 163860 for 20).
    assert faults < 20 * 8192 // 3
