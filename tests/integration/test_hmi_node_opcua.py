"""The HMI against a second OPC UA implementation, node-opcua (installed by `make setup` from
tests/opcua_node/package-lock.json): secure sessions with Basic256Sha256 and Aes128_Sha256_RsaOaep,
no session for anonymous None or a wrong password, the role check on a method call, the
VisionSystem object, and result events with their own fields."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hmi_helpers import secure_hmi_process

from controller.alarms import Alarms
from controller.operator import OperatorControl, Refused, VisionState
from controller.status import LineStatus, PartResult
from hmi.admin import client_certificate
from hmi.messages import AuditMessage, CommandMessage

NODE_CHECK = Path(__file__).parents[1] / "opcua_node"
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("node") is None or not (NODE_CHECK / "node_modules").is_dir(),
                       reason="node-opcua not installed (make setup installs it where npm is)"),
]


async def test_node_opcua_sees_what_asyncua_sees(tmp_path: Path) -> None:
    operator, alarms = OperatorControl(), Alarms()

    async def on_command(c: CommandMessage) -> tuple[bool, str]:
        state = operator.state(started=True, healthy=True)
        try:
            return True, operator.apply(c.action, c.argument, state=state, alarms=alarms, by=c.user)
        except Refused as exc:
            return False, str(exc)

    async def on_audit(a: AuditMessage) -> None:
        audits.append(a)

    audits: list[AuditMessage] = []
    async with secure_hmi_process(tmp_path, on_command=on_command, on_audit=on_audit) as (hmi, access):
        hmi.publish(LineStatus(vision_state=VisionState.CONTINUOUS.value))
        # node-opcua brings no certificate of its own here: one made and trusted as an engineer would.
        uri = "urn:lineinspect:test:node-opcua"
        config_file = tmp_path / "line.toml"
        config_file.write_text(f"[hmi]\npki_dir = '{tmp_path / 'pki'}'\nusers_file = '{tmp_path / 'users.json'}'\n")
        await asyncio.to_thread(client_certificate, str(config_file), uri, str(tmp_path / "node"))
        cert = x509.load_der_x509_certificate((tmp_path / "node" / "client-cert.der").read_bytes())
        (tmp_path / "node" / "client-cert.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        config = {"endpoint": access.endpoint, "users": access.users, "applicationUri": uri,
                  "cert": str(tmp_path / "node" / "client-cert.pem"), "key": str(tmp_path / "node" / "client-key.pem"),
                  "eventWaitMs": 3000, "resultFile": str(tmp_path / "node-result.json")}  # fmt: skip
        (tmp_path / "node.json").write_text(json.dumps(config))
        pipe = asyncio.subprocess.PIPE
        node = await asyncio.create_subprocess_exec("node", str(NODE_CHECK / "check.mjs"), str(tmp_path / "node.json"),
                                                    stdout=pipe, stderr=pipe)  # fmt: skip

        async def parts() -> None:
            for seq in range(1, 10_000):
                hmi.publish_result(PartResult(7, seq, datetime.now(UTC).isoformat(), "pass", "model_pass", 0, 0.1,
                                              "m1", 1.0, 4.0, 9.0))  # fmt: skip
                hmi.publish(LineStatus(vision_state=operator.state(started=True, healthy=True).value))
                await asyncio.sleep(0.05)

        feeding = asyncio.create_task(parts())
        try:
            out, err = await asyncio.wait_for(node.communicate(), 90)
        finally:
            feeding.cancel()
    assert node.returncode == 0, (out + err).decode()[-2000:]
    # Read from a file: node-opcua prints its own warnings on stdout (a late one broke parsing its last line in CI).
    got = json.loads((tmp_path / "node-result.json").read_text())
    assert "ADMITTED" not in (got["anonymous_none"], got["wrong_password"]), got
    assert got["health"] == "STARTING" and got["state"] in ("Operational", "Halted")
    assert {"3:VisionStateMachine", "3:ResultManagement", "3:RecipeManagement"} <= set(got["visionSystem"])
    assert "BadUserAccessDenied" in got["viewer_halt"]["error"]
    assert "BadUserAccessDenied" in got["wrong_password"]["error"]
    halted = [True, "halted: the PLC rejects every part until Reset"]
    assert got["operator_halt"] == {"status": "Good", "outputs": halted}
    assert got["operator_reset"]["outputs"][0] is True
    events = got["events"]
    assert len(events) >= 5 and all(e["resultId"].startswith("7/") and e["outcome"] == "pass" for e in events)
    assert any(a.action == "Halt" and a.result == "refused" and a.user == "viewer" for a in audits)
