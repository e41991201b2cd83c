"""boto3 against the nuage S3 endpoint, with the client's default settings
(the newest botocore sends aws-chunked uploads with CRC trailing checksums).
Run by crates/nuage/tests/api/s3.rs; prints 'boto3 suite: ok' on success."""

import io
import os
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["S3_ENDPOINT"]
KEY_ID = os.environ["S3_KEY_ID"]
SECRET = os.environ["S3_SECRET"]


def client(key_id=KEY_ID, secret=SECRET):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def code_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError(f"{fn.__name__} succeeded")


s3 = client()
B = "boto-bucket"
s3.create_bucket(Bucket=B)
assert code_of(s3.create_bucket, Bucket=B) == "BucketAlreadyOwnedByYou"
assert code_of(s3.create_bucket, Bucket="Bad_Name") == "InvalidBucketName"
s3.head_bucket(Bucket=B)
assert B in [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.get_bucket_location(Bucket=B)

# put / get / head / delete
r = s3.put_object(Bucket=B, Key="a.txt", Body=b"alpha", ContentType="text/plain",
                  Metadata={"k": "v"})
assert r["ETag"] == '"2c1743a391305fbf367df8e4f069f9f9"', r["ETag"]
g = s3.get_object(Bucket=B, Key="a.txt")
assert g["Body"].read() == b"alpha"
assert g["ContentType"] == "text/plain" and g["Metadata"] == {"k": "v"}, g
h = s3.head_object(Bucket=B, Key="a.txt")
assert h["ContentLength"] == 5 and h["ETag"] == r["ETag"]

# conditional GET
assert code_of(s3.get_object, Bucket=B, Key="a.txt", IfMatch='"nope"') == "PreconditionFailed"
try:
    s3.get_object(Bucket=B, Key="a.txt", IfNoneMatch=r["ETag"])
    raise AssertionError("If-None-Match matched but the object came back")
except ClientError as e:
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 304, e.response

# an upload of a few MiB with default checksums (aws-chunked + CRC trailer)
data = bytes((i * 31 + 7) % 251 for i in range(3 * 1024 * 1024 + 17))
s3.upload_fileobj(io.BytesIO(data), B, "big/blob.bin")
assert s3.get_object(Bucket=B, Key="big/blob.bin")["Body"].read() == data
part = s3.get_object(Bucket=B, Key="big/blob.bin", Range="bytes=100000-200000")
assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
assert part["Body"].read() == data[100000:200001]
tail = s3.get_object(Bucket=B, Key="big/blob.bin", Range="bytes=-10")
assert tail["Body"].read() == data[-10:]
assert code_of(s3.get_object, Bucket=B, Key="a.txt", Range="bytes=10-20") == "InvalidRange"

# errors
assert code_of(s3.get_object, Bucket=B, Key="missing") == "NoSuchKey"
assert code_of(s3.get_object, Bucket="no-such-bucket-x", Key="k") == "NoSuchBucket"
assert code_of(s3.delete_bucket, Bucket=B) == "BucketNotEmpty"
assert code_of(client(secret="wrong" + SECRET[5:]).list_buckets) == "SignatureDoesNotMatch"
assert code_of(client(key_id="AKIAUNKNOWNKEY000000").list_buckets) == "InvalidAccessKeyId"

# presigned URLs: valid, then expired
url = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "a.txt"}, ExpiresIn=60)
with urllib.request.urlopen(url) as resp:
    assert resp.read() == b"alpha"
expired = s3.generate_presigned_url("get_object", Params={"Bucket": B, "Key": "a.txt"},
                                    ExpiresIn=1)
import time

time.sleep(2)
try:
    urllib.request.urlopen(expired)
    raise AssertionError("an expired presigned URL was served")
except urllib.error.HTTPError as e:
    assert e.code == 403, e.code

# listing: 1,200 keys, delimiter, pagination
keys = [f"logs/{d:02d}/{i:04d}.log" for d in range(4) for i in range(300)]
for i in range(0, len(keys), 1):
    s3.put_object(Bucket=B, Key=keys[i], Body=b"x")
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=B, Prefix="logs/", PaginationConfig={"PageSize": 250})
seen = [o["Key"] for p in pages for o in p.get("Contents", [])]
assert seen == sorted(keys), (len(seen), seen[:3])
top = s3.list_objects_v2(Bucket=B, Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["big/", "logs/"], top
assert [o["Key"] for o in top["Contents"]] == ["a.txt"]
sub = s3.list_objects_v2(Bucket=B, Prefix="logs/", Delimiter="/", MaxKeys=3)
assert [p["Prefix"] for p in sub["CommonPrefixes"]] == ["logs/00/", "logs/01/", "logs/02/"]
assert sub["IsTruncated"]
more = s3.list_objects_v2(Bucket=B, Prefix="logs/", Delimiter="/",
                          ContinuationToken=sub["NextContinuationToken"])
assert [p["Prefix"] for p in more["CommonPrefixes"]] == ["logs/03/"] and not more["IsTruncated"]
after = s3.list_objects_v2(Bucket=B, Prefix="logs/03/", StartAfter="logs/03/0297.log")
assert [o["Key"] for o in after["Contents"]] == ["logs/03/0298.log", "logs/03/0299.log"]
v1 = s3.list_objects(Bucket=B, Prefix="logs/00/", MaxKeys=100)
assert len(v1["Contents"]) == 100 and v1["IsTruncated"]
v1b = s3.list_objects(Bucket=B, Prefix="logs/00/", Marker=v1["Contents"][-1]["Key"])
assert len(v1b["Contents"]) == 200 and not v1b["IsTruncated"]

# batch delete, then the bucket
for i in range(0, len(keys), 1000):
    r = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    assert len(r.get("Deleted", [])) == len(keys[i:i + 1000]) and not r.get("Errors")
s3.delete_object(Bucket=B, Key="a.txt")
s3.delete_object(Bucket=B, Key="big/blob.bin")
assert s3.list_objects_v2(Bucket=B)["KeyCount"] == 0
s3.delete_bucket(Bucket=B)
assert code_of(s3.head_bucket, Bucket=B) == "404"
print("boto3 suite: ok")
