"""Stand-in for compose.yaml's one-shot `buckets` job (minio/mc): with the root key, the two versioned
buckets (created if missing). The users scoped by docker/minio/*.json are created by the S3 stand-in
itself (tests/compose/s3_standin.py): the plane provisions its users before it listens."""

import os
import time

import boto3

s3 = boto3.client(
    "s3",
    endpoint_url="http://minio:9000",
    aws_access_key_id=os.environ["MINIO_ROOT_USER"],
    aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
    region_name="us-east-1",
)
for _attempt in range(60):  # the endpoint may still be starting
    try:
        s3.list_buckets()
        break
    except Exception:  # noqa: BLE001 - retried
        time.sleep(1)
existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
for bucket in ("textclf-mlflow", "textclf-dvc"):
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
print("buckets: textclf-mlflow, textclf-dvc (versioned)")
