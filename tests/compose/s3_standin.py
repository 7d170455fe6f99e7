"""Stand-in for compose.yaml's MinIO and its users: ``flows/s3_plane.py`` (moto's S3 with IAM enforced on
every request) on MinIO's port, with the users compose's ``buckets`` job gives MinIO: the root key (all of
S3), MLflow's and the worker's keys with the same policy documents (``docker/minio/*.json``), and the two
versioned buckets."""

import json
import os
import sys
from pathlib import Path

env = os.environ
everything = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": ["*"]}],
}


def policy(name: str) -> dict:
    return json.loads(Path(f"/policies/{name}.json").read_text())


users = {
    "root": {"key_id": env["MINIO_ROOT_USER"], "secret": env["MINIO_ROOT_PASSWORD"], "policy": everything},
    "mlflow": {
        "key_id": env["MLFLOW_S3_ACCESS_KEY_ID"],
        "secret": env["MLFLOW_S3_SECRET_ACCESS_KEY"],
        "policy": policy("textclf-mlflow"),
    },
    "worker": {
        "key_id": env["WORKER_S3_ACCESS_KEY_ID"],
        "secret": env["WORKER_S3_SECRET_ACCESS_KEY"],
        "policy": policy("textclf-dvc"),
    },
}
spec = Path("/tmp/s3-users.json")
spec.touch(mode=0o600)
spec.write_text(json.dumps({"buckets": ["textclf-mlflow", "textclf-dvc"], "users": users}))
os.execv(sys.executable, [sys.executable, "/standin/s3_plane.py", "0.0.0.0", "9000", str(spec)])
