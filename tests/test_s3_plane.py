"""The stack's S3 plane (flows/s3_plane.py) on its own: started the way `textclf stack up` starts it, then
probed over HTTP with no key, a random key, a wrong secret and each holder's key beyond its scope.
The whole stack test (tests/test_stack.py, `-m stack`) probes it again with MLflow and DVC on top."""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from projects import section

_spec = importlib.util.spec_from_file_location(
    "textclf_stack_s3", Path(__file__).resolve().parents[1] / "flows" / "stack.py"
)
assert _spec is not None and _spec.loader is not None
S = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(S)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    stack = S.Stack(tmp_path_factory.mktemp("s3-plane"), section("mlflow"))
    try:
        stack._s3()
        yield stack
    finally:
        stack.down()


def _client(stack, holder: str | None, secret: str | None = None):  # noqa: ANN001, ANN202
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{stack.ports['s3']}",
        aws_access_key_id=S.S3_KEYS[holder] if holder else "AKIA" + secrets.token_hex(8).upper(),
        aws_secret_access_key=secret or (stack.secret(f"s3-{holder}") if holder else secrets.token_hex(20)),
        region_name=S.REGION,
        config=Config(retries={"max_attempts": 1}),
    )


def _status(call) -> int:  # noqa: ANN001
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as err:
        return err.response["ResponseMetadata"]["HTTPStatusCode"]
    return 200


def test_each_key_does_what_its_policy_says_and_nothing_else(plane) -> None:  # noqa: ANN001
    server, worker, client, operator = (_client(plane, h) for h in ("mlflow", "worker", "client", "operator"))
    model = "1/models/m-1/artifacts/model.safetensors"
    assert _status(lambda: server.put_object(Bucket="textclf-mlflow", Key=model, Body=b"weights")) == 200
    assert server.get_object(Bucket="textclf-mlflow", Key=model)["Body"].read() == b"weights"
    for who in (worker, client):
        assert (
            _status(
                lambda who=who: who.put_object(Bucket="textclf-dvc", Key="store/files/md5/ab/c", Body=b"d")
            )
            == 200
        )
        assert _status(lambda who=who: who.list_objects_v2(Bucket="textclf-dvc")) == 200
        for call in (
            lambda who=who: who.get_object(Bucket="textclf-mlflow", Key=model),
            lambda who=who: who.put_object(Bucket="textclf-mlflow", Key=model, Body=b"evil"),
            lambda who=who: who.delete_object(Bucket="textclf-mlflow", Key=model),
            lambda who=who: who.list_buckets(),
        ):
            assert _status(call) == 403
    assert _status(lambda: server.list_objects_v2(Bucket="textclf-dvc")) == 403
    version = operator.list_object_versions(Bucket="textclf-mlflow", Prefix=model)["Versions"][0]["VersionId"]
    # nobody but the operator deletes a version or changes a bucket; a bulk delete is refused per key
    assert _status(lambda: server.delete_object(Bucket="textclf-mlflow", Key=model, VersionId=version)) == 403
    bulk = server.delete_objects(
        Bucket="textclf-mlflow", Delete={"Objects": [{"Key": model, "VersionId": version}]}
    )
    assert [e["Code"] for e in bulk.get("Errors", [])] == ["AccessDenied"]
    suspend = {"VersioningConfiguration": {"Status": "Suspended"}}
    assert _status(lambda: server.put_bucket_versioning(Bucket="textclf-mlflow", **suspend)) == 403
    assert _status(lambda: worker.put_bucket_versioning(Bucket="textclf-dvc", **suspend)) == 403
    assert _status(lambda: worker.create_bucket(Bucket="elsewhere")) == 403
    assert (
        operator.list_object_versions(Bucket="textclf-mlflow", Prefix=model)["Versions"][0]["VersionId"]
        == version
    )
    assert operator.get_bucket_versioning(Bucket="textclf-mlflow")["Status"] == "Enabled"


def test_no_key_a_random_key_a_wrong_secret_and_the_admin_routes_get_403(plane) -> None:  # noqa: ANN001
    url = f"http://127.0.0.1:{plane.ports['s3']}"
    operator = _client(plane, "operator")
    operator.put_object(Bucket="textclf-mlflow", Key="m/model.bin", Body=b"weights")
    for method, path in (
        ("GET", "/"),
        ("GET", "/textclf-mlflow"),
        ("GET", "/textclf-mlflow/m/model.bin"),
        ("PUT", "/textclf-mlflow/m/model.bin"),
        ("DELETE", "/textclf-mlflow/m/model.bin"),
        ("PUT", "/textclf-mlflow?versioning"),
        ("POST", "/moto-api/reset"),
        ("POST", "/moto-api/reset-auth"),
        ("GET", "/moto-api/data.json"),
    ):
        body = b"0" if method in ("PUT", "POST") else None
        assert httpx.request(method, url + path, content=body, timeout=30).status_code == 403, (method, path)
    # moto's admin routes ask no IAM question: refused even when signed with a valid key
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    worker = Credentials(S.S3_KEYS["worker"], plane.secret("s3-worker"))
    for path in ("/moto-api/reset", "/moto-api/reset-auth"):
        signed = AWSRequest("POST", url + path, data=b"0")
        SigV4Auth(worker, "s3", S.REGION).add_auth(signed)
        assert (
            httpx.post(url + path, content=b"0", headers=dict(signed.headers), timeout=30).status_code == 403
        )
    # a request signed for another AWS service (moto serves them all on one port) is not passed on
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        aws_access_key_id=S.S3_KEYS["operator"],
        aws_secret_access_key=plane.secret("s3-operator"),
        region_name=S.REGION,
    )
    assert _status(iam.list_users) == 403
    stranger, wrong = _client(plane, None), _client(plane, "worker", secret="not-the-workers-secret")
    for call in (
        stranger.list_buckets,
        lambda: stranger.get_object(Bucket="textclf-mlflow", Key="m/model.bin"),
        lambda: stranger.put_object(Bucket="textclf-mlflow", Key="m/model.bin", Body=b"evil"),
        lambda: stranger.delete_object(Bucket="textclf-mlflow", Key="m/model.bin"),
        lambda: wrong.list_objects_v2(Bucket="textclf-dvc"),
        lambda: wrong.put_object(Bucket="textclf-dvc", Key="x", Body=b"evil"),
    ):
        assert _status(call) == 403
    assert operator.get_object(Bucket="textclf-mlflow", Key="m/model.bin")["Body"].read() == b"weights"
    assert {b["Name"] for b in operator.list_buckets()["Buckets"]} == {"textclf-mlflow", "textclf-dvc"}


def test_presigned_downloads_are_checked_like_signed_requests(plane) -> None:  # noqa: ANN001
    """MLflow's server hands its clients presigned GET URLs (signed with its key) for downloads: they work
    while valid, for that object only, within the signing key's policy; nothing else presigned passes."""
    import time

    from botocore.config import Config

    v4 = Config(signature_version="s3v4")
    server = _client(plane, "mlflow")
    server.put_object(Bucket="textclf-mlflow", Key="p/MLmodel", Body=b"flavors: {}")
    server.put_object(Bucket="textclf-mlflow", Key="p/model.safetensors", Body=b"weights")

    def url(
        holder: str, method: str = "get_object", key: str = "p/MLmodel", expires: int = 60, config=v4
    ) -> str:  # noqa: ANN001
        import boto3

        c = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{plane.ports['s3']}",
            aws_access_key_id=S.S3_KEYS[holder],
            aws_secret_access_key=plane.secret(f"s3-{holder}"),
            region_name=S.REGION,
            config=config,
        )
        return c.generate_presigned_url(
            method, Params={"Bucket": "textclf-mlflow", "Key": key}, ExpiresIn=expires
        )

    good = url("mlflow")
    got = httpx.get(good, timeout=30)
    assert got.status_code == 200 and got.content == b"flavors: {}"
    assert httpx.get(good, headers={"Range": "bytes=0-6"}, timeout=30).content == b"flavors"
    assert httpx.get(good[:-4] + "0000", timeout=30).status_code == 403  # signature changed
    assert httpx.get(good.replace("p/MLmodel", "p/model.safetensors"), timeout=30).status_code == 403
    assert httpx.put(url("mlflow", "put_object"), content=b"evil", timeout=30).status_code == 403
    assert httpx.get(url("worker"), timeout=30).status_code == 403  # the signer's policy still applies
    assert (
        httpx.get(url("mlflow", config=Config(signature_version="s3")), timeout=30).status_code == 403
    )  # SigV2
    expired = url("mlflow", expires=1)
    time.sleep(2)
    assert httpx.get(expired, timeout=30).status_code == 403
    assert server.get_object(Bucket="textclf-mlflow", Key="p/MLmodel")["Body"].read() == b"flavors: {}"
