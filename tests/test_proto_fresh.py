"""The committed veil.v1 stubs are exactly what scripts/gen_protos.py produces."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protobuf_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_import_as_veil_v1() -> None:
    from veil.v1 import audit_pb2_grpc, catalog_pb2, node_pb2

    assert catalog_pb2.DESCRIPTOR.package == "veil.v1"
    assert node_pb2.NodeInfo().name == ""
    assert hasattr(audit_pb2_grpc, "AuditServiceStub")
