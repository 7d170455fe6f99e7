"""Stand-in for compose.yaml's one-shot `buckets` job (minio/mc) when the S3 endpoint is moto: the two
versioned buckets, with the root key. moto has no users or policies (no `mc admin`), so the per-service
users scoped to one bucket (docker/minio/*.json) are not created here; docs/scale-out.md says so."""

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
for bucket in ("textclf-mlflow", "textclf-dvc"):
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
print("buckets: textclf-mlflow, textclf-dvc (versioned)")
