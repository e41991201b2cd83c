"""boto3 against the nuage S3 endpoint, with the client's default settings
(the newest botocore sends aws-chunked uploads with CRC trailing checksums).
Run by crates/nuage/tests/api/s3.rs; prints 'boto3 suite: ok' on success."""

import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from boto3.s3.transfer import TransferConfig
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

# multipart: upload_file in 5 MiB parts (3 parts) with default checksums
MiB = 1024 * 1024
mp_data = bytes((i * 131 + 3) % 253 for i in range(12 * MiB + 4321))
with tempfile.NamedTemporaryFile(delete=False) as f:
    f.write(mp_data)
s3.upload_file(f.name, B, "mp/three.bin",
               Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
os.unlink(f.name)
g = s3.get_object(Bucket=B, Key="mp/three.bin")
assert g["Body"].read() == mp_data
assert g["ETag"].strip('"').endswith("-3"), g["ETag"]
want = hashlib.md5(b"".join(hashlib.md5(mp_data[i:i + 5 * MiB]).digest()
                            for i in range(0, len(mp_data), 5 * MiB))).hexdigest() + "-3"
assert g["ETag"].strip('"') == want, (g["ETag"], want)
assert s3.head_object(Bucket=B, Key="mp/three.bin")["ContentLength"] == len(mp_data)
# ranges across part boundaries (and one spanning a whole middle part)
for lo, hi in [(5 * MiB - 100, 5 * MiB + 99), (5 * MiB - 1, 10 * MiB), (3, 11 * MiB), (10 * MiB, len(mp_data) - 1)]:
    r = s3.get_object(Bucket=B, Key="mp/three.bin", Range=f"bytes={lo}-{hi}")
    assert r["Body"].read() == mp_data[lo:hi + 1], (lo, hi)

# by hand: ListParts, part order, ETag check, minimum part size, abort
up = s3.create_multipart_upload(Bucket=B, Key="mp/manual.bin", ContentType="application/x-test")
uid = up["UploadId"]
p1 = s3.upload_part(Bucket=B, Key="mp/manual.bin", UploadId=uid, PartNumber=1, Body=b"a" * 1024)
p2 = s3.upload_part(Bucket=B, Key="mp/manual.bin", UploadId=uid, PartNumber=2, Body=b"b" * 1024)
p3 = s3.upload_part(Bucket=B, Key="mp/manual.bin", UploadId=uid, PartNumber=3, Body=b"c" * 10)
listed = s3.list_parts(Bucket=B, Key="mp/manual.bin", UploadId=uid)
assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, 1024), (2, 1024), (3, 10)], listed
ups = s3.list_multipart_uploads(Bucket=B)
assert [(u["Key"], u["UploadId"]) for u in ups.get("Uploads", [])] == [("mp/manual.bin", uid)], ups
parts = [{"PartNumber": n, "ETag": p["ETag"]} for n, p in [(1, p1), (2, p2), (3, p3)]]


def complete(ps):
    return s3.complete_multipart_upload(Bucket=B, Key="mp/manual.bin", UploadId=uid,
                                        MultipartUpload={"Parts": ps})


assert code_of(complete, parts) == "EntityTooSmall"
assert code_of(complete, [parts[1], parts[0], parts[2]]) == "InvalidPartOrder"
assert code_of(complete, [parts[0], {"PartNumber": 2, "ETag": '"0123456789abcdef0123456789abcdef"'}]) == "InvalidPart"
assert code_of(complete, [parts[0], {"PartNumber": 7, "ETag": p1["ETag"]}]) == "InvalidPart"
# a single (last) part may be small: but the upload is aborted instead
s3.abort_multipart_upload(Bucket=B, Key="mp/manual.bin", UploadId=uid)
assert not s3.list_multipart_uploads(Bucket=B).get("Uploads"), "an aborted upload is listed"
assert code_of(s3.list_parts, Bucket=B, Key="mp/manual.bin", UploadId=uid) == "NoSuchUpload"
assert code_of(complete, parts) == "NoSuchUpload"
assert code_of(s3.get_object, Bucket=B, Key="mp/manual.bin") == "NoSuchKey"

# a small last part completes, and replaces an earlier object of the key
up = s3.create_multipart_upload(Bucket=B, Key="a.txt", Metadata={"m": "1"})
uid = up["UploadId"]
e1 = s3.upload_part(Bucket=B, Key="a.txt", UploadId=uid, PartNumber=1, Body=b"z" * (5 * MiB))["ETag"]
e2_old = s3.upload_part(Bucket=B, Key="a.txt", UploadId=uid, PartNumber=2, Body=b"first")["ETag"]
e2 = s3.upload_part(Bucket=B, Key="a.txt", UploadId=uid, PartNumber=2, Body=b"tail")["ETag"]
assert [p["ETag"] for p in s3.list_parts(Bucket=B, Key="a.txt", UploadId=uid)["Parts"]][1] == e2
s3.upload_part(Bucket=B, Key="a.txt", UploadId=uid, PartNumber=3, Body=b"unused")
done = s3.complete_multipart_upload(Bucket=B, Key="a.txt", UploadId=uid, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
assert done["ETag"].strip('"').endswith("-2"), done
g = s3.get_object(Bucket=B, Key="a.txt")
assert g["Body"].read() == b"z" * (5 * MiB) + b"tail" and g["Metadata"] == {"m": "1"}, g["Metadata"]
s3.put_object(Bucket=B, Key="a.txt", Body=b"alpha")
assert not s3.list_multipart_uploads(Bucket=B).get("Uploads")

# batch delete, then the bucket
for i in range(0, len(keys), 1000):
    r = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    assert len(r.get("Deleted", [])) == len(keys[i:i + 1000]) and not r.get("Errors")
s3.delete_object(Bucket=B, Key="a.txt")
s3.delete_object(Bucket=B, Key="big/blob.bin")
s3.delete_object(Bucket=B, Key="mp/three.bin")
assert s3.list_objects_v2(Bucket=B)["KeyCount"] == 0
s3.delete_bucket(Bucket=B)
assert code_of(s3.head_bucket, Bucket=B) == "404"
print("boto3 suite: ok")
