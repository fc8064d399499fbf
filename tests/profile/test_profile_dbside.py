"""bench.profiling.dbside's parsers: tshark's fields per request, perf stat's CSV."""
from __future__ import annotations

import subprocess

from bench.profiling import dbside

# `tshark -T fields -e tcp.srcport -e tcp.len -e pgsql.type` for one request of py-none, as printed
TSHARK = """\
40312|63|Bind,Execute,Sync
55432|195|Bind completion,Data row,Portal suspended,Ready for query
40312|140|Bind,Execute,Sync
55432|1256|Bind completion,Data row,Data row,Command completion,Ready for query
40312|0|
"""


def test_decode_counts_messages_and_segments_per_request(monkeypatch, tmp_path):
    seen = {}

    def fake_run(argv, **kwargs):
        seen["argv"] = argv
        return subprocess.CompletedProcess(argv, 0, stdout=TSHARK, stderr="")

    monkeypatch.setattr(dbside.subprocess, "run", fake_run)
    result = dbside.decode(tmp_path / "x.pcap", 55432, [40312], requests=1)
    assert "(tcp.port == 40312)" in seen["argv"]
    assert result["data_segments_per_request"] == {"server->postgres": 2.0, "postgres->server": 2.0}
    assert result["pure_acks_per_request"] == {"server->postgres": 1.0}
    messages = result["messages_per_request"]
    assert messages["server->postgres: Sync"] == 2.0
    assert messages["postgres->server: Portal suspended"] == 1.0
    assert messages["postgres->server: Data row"] == 3.0
    assert result["first_request"][0] == "server->postgres: Bind + Execute + Sync"


def test_perf_stat_csv():
    text = ("14523,,raw_syscalls:sys_enter,4000123,100.00,,\n"
            "<not counted>,,context-switches,0,0.00,,\n"
            "# started on ...\n")
    assert dbside.parse_perf_stat(text) == {"raw_syscalls:sys_enter": 14523.0}
