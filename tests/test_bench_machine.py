"""Every benchmark report says where it ran (issue 14, item 7)."""

import json

from hybridlm.bench.machine import cpu_model_and_flags, isa_summary, machine_info, machine_line
from hybridlm.bench.timing import Row
from hybridlm.cli import bench as bench_cli
from hybridlm.cli import main

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse2 avx avx2 fma bmi2

processor\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse2 avx avx2 fma bmi2 avx512f
"""


def test_cpu_model_and_isa_come_from_the_first_processor():
    model, flags = cpu_model_and_flags(CPUINFO)
    assert model == "AMD EPYC 7763 64-Core Processor"
    assert isa_summary(flags) == "AVX2 yes, AVX-512 no, AMX no"
    assert isa_summary({"avx512f", "amx_tile"}) == "AVX2 no, AVX-512 yes, AMX yes"


def test_machine_line_names_cpu_threads_and_versions():
    line = machine_line(CPUINFO)
    assert line.startswith("machine: AMD EPYC 7763 64-Core Processor; AVX2 yes, AVX-512 no, AMX no; ")
    info = machine_info(CPUINFO)
    assert f"{info['torch_threads']} thread(s)" in line and f"torch {info['torch']}" in line
    assert f"numba {info['numba']}" in line and info["numba"] != "not installed"


def test_every_bench_report_starts_with_the_machine(capsys, monkeypatch):
    monkeypatch.setattr(bench_cli, "suite_rows", lambda name, *_: [Row(name, "step", 0.5, 1.0, "ref")])
    assert main(["bench", "data", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("machine: ") and "1 thread(s)" in lines[0]
    assert any("2.00x" in line for line in lines)
    assert main(["bench", "data", "--json"]) == 0
    first, row = capsys.readouterr().out.splitlines()
    assert json.loads(first)["machine"]["torch_threads"] == 1 and json.loads(row)["ratio"] == 2.0
