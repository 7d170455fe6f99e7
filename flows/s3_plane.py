"""The stack's S3 plane: moto's S3 with IAM enforcement on from the first request, behind a filter.

    python flows/s3_plane.py HOST PORT USERS_JSON

``USERS_JSON`` (a 0600 file the stack writes) names the versioned buckets and, per user, an access key,
its secret and an IAM policy document. Users, keys, policies and buckets are created inside this
process before it listens, so no request ever runs unauthenticated (moto's
``INITIAL_NO_AUTH_ACTION_COUNT`` is 0). moto then checks every request's SigV4 signature against the
key's secret and evaluates the user's policy on the action and the bucket/key ARN.

The filter in front answers 403 itself to what moto would serve without asking who calls: its admin
routes (``/moto-api``: reset, dashboard, auth switch), unsigned requests and requests signed for another
service than S3 (moto serves every AWS API on one port). Presigned GET/HEAD URLs (MLflow's server hands
them to clients for downloads) are checked by the filter, since moto checks only signatures in the
``Authorization`` header (:func:`from_presigned`). docs/security.md says what this does not give you
compared with MinIO or AWS.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # read by moto.settings at import

from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.iam.models import iam_backends  # noqa: E402
from moto.s3.models import s3_backends  # noqa: E402
from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: E402
from werkzeug.serving import run_simple  # noqa: E402

REGION = "us-east-1"
DENIED = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>AccessDenied</Code><Message>%s</Message></Error>"
)


QUERY_AUTH = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders")


def from_presigned(environ: dict, secrets: dict[str, str]) -> bytes | None:
    """A presigned GET or HEAD (SigV4 in the query string: what MLflow's server hands its clients for
    downloads) is checked here, signature and expiry, because moto checks only the header form; a valid
    one is passed on re-signed in the header form as the same key, so moto still applies that key's
    policy. Returns why it is refused, or None."""
    params = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    auth = dict(p for p in params if p[0] in (*QUERY_AUTH, "X-Amz-Signature", "X-Amz-Security-Token"))
    rest = urlencode([p for p in params if p[0] not in auth])
    scope = auth.get("X-Amz-Credential", "").split("/")
    if auth.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or len(scope) != 5 or scope[3] != "s3":
        return b"only SigV4-signed S3 requests are served"
    if environ["REQUEST_METHOD"] not in ("GET", "HEAD") or "X-Amz-Security-Token" in auth:
        return b"presigned URLs are served for GET and HEAD with an access key only"
    if scope[0] not in secrets or not {*QUERY_AUTH, "X-Amz-Signature"} <= auth.keys():
        return b"the presigned URL names no known key"
    signed_at = datetime.strptime(auth["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if datetime.now(UTC) > signed_at + timedelta(seconds=int(auth["X-Amz-Expires"])):
        return b"the presigned URL expired"
    key, host = Credentials(scope[0], secrets[scope[0]]), environ["HTTP_HOST"]
    path = environ.get("RAW_URI", environ["PATH_INFO"]).partition("?")[0]
    url = f"http://{host}{path}" + (f"?{rest}" if rest else "")
    expected = AWSRequest(environ["REQUEST_METHOD"], url, headers={"host": host})
    expected.context["timestamp"] = auth["X-Amz-Date"]
    S3SigV4QueryAuth(key, "s3", scope[2], expires=int(auth["X-Amz-Expires"])).add_auth(expected)
    signature = dict(parse_qsl(urlsplit(expected.url).query))["X-Amz-Signature"]
    if auth["X-Amz-SignedHeaders"] != "host" or not hmac.compare_digest(signature, auth["X-Amz-Signature"]):
        return b"the presigned URL's signature does not match"
    forward = AWSRequest(environ["REQUEST_METHOD"], url, headers={"host": host})
    S3SigV4Auth(key, "s3", scope[2]).add_auth(forward)
    environ["QUERY_STRING"], environ["RAW_URI"] = rest, path + (f"?{rest}" if rest else "")
    environ["REQUEST_URI"] = environ["RAW_URI"]
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"):
        environ["HTTP_" + name.upper().replace("-", "_")] = forward.headers[name]
    return None


def signed_s3_only(app, secrets: dict[str, str]):  # noqa: ANN001, ANN201 - WSGI
    """Pass on only SigV4-signed S3 requests; refuse the rest with 403 before moto sees them."""

    def guarded(environ, start_response):  # noqa: ANN001, ANN202
        auth = environ.get("HTTP_AUTHORIZATION", "")
        scope = auth.partition("Credential=")[2].partition(",")[0].split("/")
        why = None
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            why = b"admin routes are not served"
        elif not auth:
            why = from_presigned(environ, secrets)
        elif not auth.startswith("AWS4-HMAC-SHA256 ") or len(scope) != 5:
            why = b"only SigV4-signed requests are served"
        elif scope[3] != "s3":
            why = b"only S3 is served"
        if why is None:
            return app(environ, start_response)
        body = DENIED % why
        headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        start_response("403 Forbidden", headers)
        return [body]

    return guarded


def provision(spec: dict) -> None:
    """Users with their own key and policy, and the versioned buckets: in this process, before serving."""
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for name, user in spec["users"].items():
        iam.create_user(REGION, name)
        key = iam.create_access_key(name)
        key.access_key_id, key.secret_access_key = user["key_id"], user["secret"]
        iam.put_user_policy(name, "textclf", json.dumps(user["policy"]))
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in spec["buckets"]:
        s3.create_bucket(bucket, REGION)
        s3.put_bucket_versioning(bucket, "Enabled")


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    host, port, spec = sys.argv[1], int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
    provision(spec)
    secrets = {user["key_id"]: user["secret"] for user in spec["users"].values()}
    app = signed_s3_only(DomainDispatcherApplication(create_backend_app), secrets)
    run_simple(host, port, app, threaded=True)


if __name__ == "__main__":
    main()
