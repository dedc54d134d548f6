"""Property-based fuzz of the API against its own OpenAPI document (schemathesis), on both
databases, as an admin (so requests reach the handlers rather than stopping at 403): no 500s,
every status, content type and body as documented, invalid input refused.

Left out: the live stream (it never ends), sign-out (it would end the fuzzer's own access) and
token revocation (it would revoke the fuzzer's token); test_server_people covers those.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from support.server import add_token, live_server, settings_for

pytestmark = pytest.mark.slow

# 15 examples per operation on each database keeps CI inside its budget; a deeper run:
# POLEWATCH_FUZZ_EXAMPLES=200 scripts/test tests/server/test_server_fuzz.py
EXAMPLES = os.environ.get("POLEWATCH_FUZZ_EXAMPLES", "15")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "allow_header_conformance",
    ]
)


async def test_api_fuzz_finds_no_server_errors_and_no_schema_violations(database: str, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (it comes with the dev extra)")
    token = add_token(database, "admin", "fuzzer")
    async with live_server(settings_for(None, database)) as base:
        proc = await asyncio.create_subprocess_exec(
            st, "run", f"{base}openapi.json", "--header", f"Authorization: Bearer {token}",
            "--exclude-path", "/api/stream", "--exclude-path", "/api/alerts/stream",
            "--exclude-path", "/api/auth/logout",
            "--exclude-path-regex", "^/api/tokens/", "--checks", CHECKS, "--max-examples", EXAMPLES,
            "--workers", "1", "--seed", os.environ.get("POLEWATCH_FUZZ_SEED", "20261123"),
            "--no-color",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=540)
    report = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(report)
    summary = report[report.find("SUMMARY") :] if "SUMMARY" in report else report[-3000:]
    assert proc.returncode == 0, report[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    tested = re.search(r"Tested: (\d+)", summary)
    assert selected and tested, summary
    # Every operation was reached, all but the four left out on purpose.
    assert int(tested[1]) == int(selected[1]) == int(selected[2]) - 4, summary
    print(" | ".join(line.strip() for line in summary.splitlines() if re.search(r"Selected|Tested|cases|passed", line)))
