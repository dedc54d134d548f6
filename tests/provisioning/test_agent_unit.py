"""The agent's systemd unit finishes an enrolment prepared without a link before each start: its
ExecStartPre command, run as systemd would run it, does nothing when nothing is pending and fails
(so systemd retries) while the server is out of reach."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from polewatch.demo import sample_clip
from polewatch.provisioning.agent_files import systemd_unit
from support.ports import free_port

EXE = f"{sys.executable} -m polewatch"


def pre_command(state_dir: Path) -> list[str]:
    unit = systemd_unit(Path("/etc/polewatch/agent.yaml"), EXE, state_dir=state_dir)
    lines = [line for line in unit.splitlines() if line.startswith("ExecStartPre=")]
    assert len(lines) == 1 and unit.index("ExecStartPre=") < unit.index("ExecStart=")
    return shlex.split(lines[0].removeprefix("ExecStartPre="))


def test_the_units_pre_start_step_is_a_no_op_without_a_pending_enrolment(tmp_path: Path) -> None:
    done = subprocess.run(pre_command(tmp_path / "state"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "nothing pending" in done.stdout
    assert "ExecStartPre" not in systemd_unit(Path("/etc/polewatch/agent.yaml"), EXE)


def test_the_units_pre_start_step_fails_while_the_server_is_out_of_reach(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare = [*shlex.split(EXE), "provision", "enrol", "2345-6789-ABCD", "--server", f"http://127.0.0.1:{free_port()}",
               "--camera", f"cam1={sample_clip()}", "--state-dir", str(state), "--config", str(tmp_path / "agent.yaml"),
               "--label-dir", str(tmp_path), "--start", "none"]  # fmt: skip
    prepared = subprocess.run(prepare, capture_output=True, text=True, timeout=180)
    assert prepared.returncode == 0 and (state / "enrolment" / "pending.json").is_file(), prepared.stdout
    done = subprocess.run(pre_command(state), capture_output=True, text=True, timeout=180)
    assert done.returncode == 75 and "still pending" in done.stderr
    assert (state / "enrolment" / "pending.json").is_file() and not (tmp_path / "agent.yaml").exists()
