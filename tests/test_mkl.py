"""leantune/mkl.py: on a non-Intel x86 CPU, importing leantune makes MKL run its AVX2 (or better) path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from leantune import mkl

# A matrix multiply after importing leantune; MKL_VERBOSE prints the path MKL chose before the first one.
CHILD = """
import leantune, torch
a, b = torch.randn(300, 200, dtype=torch.float64).float(), torch.randn(200, 100, dtype=torch.float64).float()
err = ((a @ b).double() - a.double() @ b.double()).abs().max().item()
print("max error", err)
"""


def _header(**env: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env=dict(os.environ, MKL_VERBOSE="1", **env)).stdout
    header = next(line for line in out.splitlines() if "oneMKL" in line or "Intel(R) MKL" in line)
    return header, float(out.split("max error")[1])


@pytest.mark.skipif(not mkl.applies(), reason="only for non-Intel x86-64 CPUs with torch's MKL")
def test_mkl_runs_the_path_of_the_cpus_instruction_sets_and_the_same_maths():
    patched, err = _header()
    plain, plain_err = _header(LEANTUNE_NO_MKL_PATCH="1")
    assert "Intel(R) Architecture processors" in plain  # MKL's generic path, as torch ships it here
    assert "Intel(R) Architecture processors" not in patched  # e.g. "Intel(R) AVX2 enabled processors"
    assert "enabled processors" in patched
    assert err < 1e-4 and plain_err < 1e-4  # fp32 products of 200 terms: rounding only


def test_it_only_applies_where_it_should(monkeypatch):
    monkeypatch.setenv("LEANTUNE_NO_MKL_PATCH", "1")
    assert not mkl.applies() and not mkl.use_cpu_features()
    monkeypatch.delenv("LEANTUNE_NO_MKL_PATCH")
    monkeypatch.setattr(mkl, "_vendor", lambda: "GenuineIntel")
    assert not mkl.applies()
