"""Storage quotas with boto3: a bucket quota and a project quota (set over
the REST APIs by the test harness) refuse writes that would exceed them,
store nothing of the refused write, and free up as objects are deleted.
Run by crates/nuage/tests/api/s3.rs; prints 'boto3 quotas: ok' on success."""

import json
import os
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["S3_ENDPOINT"],
    aws_access_key_id=os.environ["S3_KEY_ID"],
    aws_secret_access_key=os.environ["S3_SECRET"],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
API, TOKEN = os.environ["NUAGE_API"], os.environ["NUAGE_TOKEN"]
ADMIN, ADMIN_TOKEN = os.environ["NUAGE_ADMIN"], os.environ["NUAGE_ADMIN_TOKEN"]


def api(method, path, body=None, admin=False):
    req = urllib.request.Request((ADMIN if admin else API) + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN if admin else TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def error_of(fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} succeeded")


B = "quota-bucket"
s3.create_bucket(Bucket=B)
bucket_path = f"/v1/orgs/acme/projects/web/buckets/{B}"
status, b = api("PATCH", bucket_path, {"quota": {"max_bytes": 1000, "max_objects": 3}})
assert status == 200 and b["quota"] == {"max_bytes": 1000, "max_objects": 3}, (status, b)
assert api("PATCH", bucket_path, {"quota": {"max_bytes": 0}})[0] == 400
assert api("PATCH", bucket_path, {"quota": {"max_bytes": "lots"}})[0] == 400

s3.put_object(Bucket=B, Key="a", Body=b"x" * 600)
assert error_of(s3.put_object, Bucket=B, Key="b", Body=b"x" * 500) == ("QuotaExceeded", 403)
assert error_of(s3.head_object, Bucket=B, Key="b")[1] == 404
s3.put_object(Bucket=B, Key="a", Body=b"x" * 900)  # a replacement counts its new size only
s3.put_object(Bucket=B, Key="b", Body=b"x" * 50)
s3.put_object(Bucket=B, Key="c", Body=b"")
assert error_of(s3.put_object, Bucket=B, Key="d", Body=b"") == ("QuotaExceeded", 403)
status, b = api("GET", bucket_path)
assert b["usage"] == {"bytes": 950, "objects": 3}, b
s3.delete_object(Bucket=B, Key="a")
s3.put_object(Bucket=B, Key="d", Body=b"y" * 900)
assert api("GET", bucket_path)[1]["usage"] == {"bytes": 950, "objects": 3}
# copies and completed multipart uploads count too
assert error_of(s3.copy_object, Bucket=B, Key="e", CopySource=f"{B}/d")[0] == "QuotaExceeded"
status, b = api("PATCH", bucket_path, {"quota": {}})
assert status == 200 and b["quota"] == {}, b

# versions count until they are deleted for good
s3.put_bucket_versioning(Bucket=B, VersioningConfiguration={"Status": "Enabled"})
api("PATCH", bucket_path, {"quota": {"max_objects": 5}})
s3.put_object(Bucket=B, Key="d", Body=b"v2")
s3.delete_object(Bucket=B, Key="d")  # a delete marker is one more object
assert api("GET", bucket_path)[1]["usage"]["objects"] == 5
assert error_of(s3.put_object, Bucket=B, Key="f", Body=b"")[0] == "QuotaExceeded"
for v in s3.list_object_versions(Bucket=B, Prefix="d")["Versions"]:
    s3.delete_object(Bucket=B, Key="d", VersionId=v["VersionId"])
s3.put_object(Bucket=B, Key="f", Body=b"")
api("PATCH", bucket_path, {"quota": {}})

# the project's quota, set by the operator, spans its buckets
status, st = api("GET", "/v1/orgs/acme/projects/web/storage")
assert status == 200 and st["quota"] == {}, st
used = st["usage"]["bytes"]
status, st = api("PUT", "/admin/v1/orgs/acme/projects/web/storage-quota", {"max_bytes": used + 100}, admin=True)
assert status == 200 and st == {"max_bytes": used + 100}, (status, st)
assert api("PUT", "/admin/v1/orgs/acme/projects/web/storage-quota", {"max_bytes": -1}, admin=True)[0] == 400
# tenants cannot reach the operator's route, nor set it with their token
assert api("PUT", "/admin/v1/orgs/acme/projects/web/storage-quota", {}, admin=False)[0] == 404
s3.create_bucket(Bucket="quota-second")
assert error_of(s3.put_object, Bucket="quota-second", Key="big", Body=b"z" * 200)[0] == "QuotaExceeded"
s3.put_object(Bucket="quota-second", Key="small", Body=b"z" * 50)
status, st = api("GET", "/v1/orgs/acme/projects/web/storage")
assert st["usage"]["bytes"] == used + 50 and st["quota"]["max_bytes"] == used + 100, (used, st)
print("boto3 quotas: ok")
