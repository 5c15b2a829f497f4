"""retain_freed_memory: a freed block is reused by the next allocation instead of being mapped
again, which the kernel's count of minor page faults shows (each process gets its own malloc)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")

BLOCK_FLOATS = 50_000_000  # 200 MB: far above glibc's largest mmap threshold (32 MiB)
PROBE = """
import json, resource, sys, torch
from exfm_plugin.allocator import allocator_name, configure_allocator, retain_freed_memory
applied = {{"retain": retain_freed_memory, "configure": configure_allocator}}.get(sys.argv[1], lambda: False)()
def step_faults():  # a training step's pattern: a few large tensors made, used, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones({n}); y = torch.ones({n} // 2); z = x[:{n} // 2] * y
    del x, y, z
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [step_faults() for _ in range(4)]
print(json.dumps({{"applied": applied, "again": retain_freed_memory() if applied else False,
                   "faults": faults[-1], "name": allocator_name()}}))
""".format(n=BLOCK_FLOATS)


def probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "EXFM_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_blocks_are_reused_not_mapped_again():
    """In a steady state the system allocator maps (and the kernel zeroes) every block of the
    step again: 400 MB of pages. Retained, at least the blocks freed next to the heap's top are
    reused (glibc 2.36's posix_memalign, which torch uses, does not reuse every freed block
    for the next request of its size, so not all of them)."""
    system, retained = probe("system"), probe("retain")
    assert system["name"] == "system malloc" and retained["name"].startswith("retain")
    assert retained["applied"] and retained["again"]  # idempotent
    pages = 2 * BLOCK_FLOATS * 4 // os.sysconf("SC_PAGE_SIZE")
    if system["faults"] < pages // 600:  # huge pages everywhere: nothing to tell apart
        pytest.skip(f"the kernel mapped 400 MB in {system['faults']} faults (transparent huge pages)")
    assert system["faults"] >= 0.9 * pages
    assert retained["faults"] <= 0.75 * system["faults"], (retained, system, pages)


def test_exfm_processes_retain_only_when_asked():
    """configure_allocator (the CLI's and the Ray workers' first call) keeps glibc's defaults
    unless EXFM_MALLOC=retain."""
    assert probe("configure")["name"] == "system malloc"
    assert probe("configure", EXFM_MALLOC="system")["name"] == "system malloc"
    asked = probe("configure", EXFM_MALLOC="retain")
    assert asked["applied"] and asked["name"].startswith("retain")
