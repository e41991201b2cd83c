"""boto3 against the nuage S3 endpoint: conditional requests, additional
checksums, CopyObject and UploadPartCopy, object and bucket tagging,
default encryption. Run by crates/nuage/tests/api/s3.rs; prints
'boto3 objects: ok' on success."""

import base64
import datetime
import hashlib
import io
import os
import urllib.error
import urllib.parse
import urllib.request
import zlib

import boto3
from boto3.s3.transfer import TransferConfig
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


def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} succeeded")


def code_of(fn, *args, **kwargs):
    return error_of(fn, *args, **kwargs)[0]


def b64(raw):
    return base64.b64encode(raw).decode()


B, B2 = "obj-bucket", "obj-other"
s3.create_bucket(Bucket=B)
s3.create_bucket(Bucket=B2)

# ---- conditional writes and reads -------------------------------------------
r = s3.put_object(Bucket=B, Key="c.txt", Body=b"one", IfNoneMatch="*")
assert code_of(s3.put_object, Bucket=B, Key="c.txt", Body=b"two", IfNoneMatch="*") == "PreconditionFailed"
assert s3.get_object(Bucket=B, Key="c.txt")["Body"].read() == b"one"
assert code_of(s3.put_object, Bucket=B, Key="c.txt", Body=b"two", IfMatch='"0123"') == "PreconditionFailed"
r2 = s3.put_object(Bucket=B, Key="c.txt", Body=b"two", IfMatch=r["ETag"])
assert s3.get_object(Bucket=B, Key="c.txt")["Body"].read() == b"two"
assert code_of(s3.put_object, Bucket=B, Key="missing.txt", Body=b"x", IfMatch=r2["ETag"]) == "NoSuchKey"

h = s3.head_object(Bucket=B, Key="c.txt")
modified = h["LastModified"]
before = modified - datetime.timedelta(hours=1)
after = modified + datetime.timedelta(hours=1)
assert s3.get_object(Bucket=B, Key="c.txt", IfModifiedSince=before)["Body"].read() == b"two"
assert error_of(s3.get_object, Bucket=B, Key="c.txt", IfModifiedSince=after)[1] == 304
assert error_of(s3.get_object, Bucket=B, Key="c.txt", IfUnmodifiedSince=before)[0] == "PreconditionFailed"
assert s3.get_object(Bucket=B, Key="c.txt", IfUnmodifiedSince=after)["Body"].read() == b"two"
# If-Match that holds wins over a failing If-Unmodified-Since (RFC 9110)
assert s3.get_object(Bucket=B, Key="c.txt", IfMatch=r2["ETag"], IfUnmodifiedSince=before)["Body"].read() == b"two"
assert error_of(s3.head_object, Bucket=B, Key="c.txt", IfNoneMatch=r2["ETag"])[1] == 304

# ---- standard headers ------------------------------------------------------------
expires = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
s3.put_object(Bucket=B, Key="h.txt", Body=b"h", Expires=expires, ContentDisposition="attachment",
              CacheControl="max-age=60", ContentEncoding="identity", ContentLanguage="fr")
g = s3.get_object(Bucket=B, Key="h.txt")
assert g["Expires"] == expires, g.get("Expires")
assert (g["ContentDisposition"], g["CacheControl"], g["ContentLanguage"]) == ("attachment", "max-age=60", "fr")

# ---- additional checksums ------------------------------------------------------
data = bytes(range(256)) * 100
s3.put_object(Bucket=B, Key="sum/sha256", Body=data, ChecksumAlgorithm="SHA256")
h = s3.head_object(Bucket=B, Key="sum/sha256", ChecksumMode="ENABLED")
assert h["ChecksumSHA256"] == b64(hashlib.sha256(data).digest()), h
assert "ChecksumSHA256" not in s3.head_object(Bucket=B, Key="sum/sha256")
crc = b64(zlib.crc32(data).to_bytes(4, "big"))
s3.put_object(Bucket=B, Key="sum/crc32", Body=data, ChecksumCRC32=crc)
g = s3.get_object(Bucket=B, Key="sum/crc32", ChecksumMode="ENABLED")
assert g["ChecksumCRC32"] == crc and g["Body"].read() == data
assert code_of(s3.put_object, Bucket=B, Key="sum/bad", Body=data, ChecksumCRC32="AAAAAA==") == "BadDigest"
assert code_of(s3.put_object, Bucket=B, Key="sum/bad", Body=data,
               ChecksumSHA1=b64(hashlib.sha1(b"other").digest())) == "BadDigest"
assert code_of(s3.head_object, Bucket=B, Key="sum/bad") == "404"
# boto3's default: a CRC computed on the fly and sent as an aws-chunked trailer
s3.upload_fileobj(io.BytesIO(data), B, "sum/default")
h = s3.head_object(Bucket=B, Key="sum/default", ChecksumMode="ENABLED")
assert any(k.startswith("Checksum") and k != "ChecksumType" for k in h), h
# multipart with CRC32 parts: a composite checksum "…-N"
MiB = 1024 * 1024
big = bytes((i * 17 + 5) % 251 for i in range(11 * MiB))
s3.upload_fileobj(io.BytesIO(big), B, "sum/multi", ExtraArgs={"ChecksumAlgorithm": "CRC32"},
                  Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB))
h = s3.head_object(Bucket=B, Key="sum/multi", ChecksumMode="ENABLED")
parts = [zlib.crc32(big[i:i + 5 * MiB]).to_bytes(4, "big") for i in range(0, len(big), 5 * MiB)]
want = b64(zlib.crc32(b"".join(parts)).to_bytes(4, "big")) + "-3"
assert h["ChecksumCRC32"] == want, (h.get("ChecksumCRC32"), want)
assert h.get("ChecksumType") == "COMPOSITE", h

# ---- object tagging ----------------------------------------------------------------
s3.put_object(Bucket=B, Key="t.txt", Body=b"t", Tagging="team=data&tier=hot")
assert s3.get_object(Bucket=B, Key="t.txt")["TagCount"] == 2
tags = s3.get_object_tagging(Bucket=B, Key="t.txt")["TagSet"]
assert sorted((t["Key"], t["Value"]) for t in tags) == [("team", "data"), ("tier", "hot")], tags
s3.put_object_tagging(Bucket=B, Key="t.txt", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
assert s3.get_object_tagging(Bucket=B, Key="t.txt")["TagSet"] == [{"Key": "k", "Value": "v"}]
too_many = {"TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]}
assert code_of(s3.put_object_tagging, Bucket=B, Key="t.txt", Tagging=too_many) == "InvalidTag"
dup = {"TagSet": [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}]}
assert code_of(s3.put_object_tagging, Bucket=B, Key="t.txt", Tagging=dup) == "InvalidTag"
assert code_of(s3.put_object_tagging, Bucket=B, Key="nope", Tagging={"TagSet": []}) == "NoSuchKey"
s3.delete_object_tagging(Bucket=B, Key="t.txt")
assert s3.get_object_tagging(Bucket=B, Key="t.txt")["TagSet"] == []
assert s3.get_object(Bucket=B, Key="t.txt")["Body"].read() == b"t"

# ---- bucket tagging and default encryption ---------------------------------------
assert code_of(s3.get_bucket_tagging, Bucket=B) == "NoSuchTagSet"
s3.put_bucket_tagging(Bucket=B, Tagging={"TagSet": [{"Key": "cost-center", "Value": "42"}]})
assert s3.get_bucket_tagging(Bucket=B)["TagSet"] == [{"Key": "cost-center", "Value": "42"}]
s3.delete_bucket_tagging(Bucket=B)
assert code_of(s3.get_bucket_tagging, Bucket=B) == "NoSuchTagSet"
enc = s3.get_bucket_encryption(Bucket=B)["ServerSideEncryptionConfiguration"]["Rules"][0]
assert enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms", enc
assert enc["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"], enc

# ---- CopyObject ------------------------------------------------------------------------
s3.put_object(Bucket=B, Key="src.bin", Body=data, ContentType="application/x-src",
              Metadata={"origin": "a"}, Tagging="t=1")
src_etag = s3.head_object(Bucket=B, Key="src.bin")["ETag"]
c = s3.copy_object(Bucket=B2, Key="copy.bin", CopySource={"Bucket": B, "Key": "src.bin"})
assert c["CopyObjectResult"]["ETag"] == src_etag
g = s3.get_object(Bucket=B2, Key="copy.bin")
assert g["Body"].read() == data and g["ContentType"] == "application/x-src" and g["Metadata"] == {"origin": "a"}
assert s3.get_object_tagging(Bucket=B2, Key="copy.bin")["TagSet"] == [{"Key": "t", "Value": "1"}]
s3.copy_object(Bucket=B, Key="replaced.bin", CopySource=f"{B}/src.bin", MetadataDirective="REPLACE",
               ContentType="text/plain", Metadata={"new": "b"}, TaggingDirective="REPLACE", Tagging="x=y")
h = s3.head_object(Bucket=B, Key="replaced.bin")
assert h["ContentType"] == "text/plain" and h["Metadata"] == {"new": "b"}, h
assert s3.get_object_tagging(Bucket=B, Key="replaced.bin")["TagSet"] == [{"Key": "x", "Value": "y"}]
assert code_of(s3.copy_object, Bucket=B, Key="src.bin", CopySource=f"{B}/src.bin") == "InvalidRequest"
s3.copy_object(Bucket=B, Key="src.bin", CopySource=f"{B}/src.bin", MetadataDirective="REPLACE",
               Metadata={"rewritten": "1"})
assert s3.head_object(Bucket=B, Key="src.bin")["Metadata"] == {"rewritten": "1"}
assert s3.get_object(Bucket=B, Key="src.bin")["Body"].read() == data
assert code_of(s3.copy_object, Bucket=B, Key="x", CopySource=f"{B}/src.bin",
               CopySourceIfMatch='"0000"') == "PreconditionFailed"
assert code_of(s3.copy_object, Bucket=B, Key="x", CopySource=f"{B}/no-such-key") == "NoSuchKey"
assert code_of(s3.copy_object, Bucket=B, Key="x", CopySource="no-such-bucket-zz/k") == "NoSuchBucket"
assert code_of(s3.head_object, Bucket=B, Key="x") == "404"

# ---- UploadPartCopy ---------------------------------------------------------------------
s3.put_object(Bucket=B, Key="big.bin", Body=big)
up = s3.create_multipart_upload(Bucket=B2, Key="assembled.bin")
uid = up["UploadId"]
p1 = s3.upload_part_copy(Bucket=B2, Key="assembled.bin", UploadId=uid, PartNumber=1,
                         CopySource={"Bucket": B, "Key": "big.bin"}, CopySourceRange=f"bytes=0-{5 * MiB - 1}")
p2 = s3.upload_part_copy(Bucket=B2, Key="assembled.bin", UploadId=uid, PartNumber=2,
                         CopySource={"Bucket": B, "Key": "src.bin"})
assert code_of(s3.upload_part_copy, Bucket=B2, Key="assembled.bin", UploadId=uid, PartNumber=3,
               CopySource={"Bucket": B, "Key": "src.bin"}, CopySourceRange="bytes=0-99999999") == "InvalidRange"
s3.complete_multipart_upload(Bucket=B2, Key="assembled.bin", UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
    {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
got = s3.get_object(Bucket=B2, Key="assembled.bin")["Body"].read()
assert got == big[:5 * MiB] + data, len(got)

# ---- virtual-hosted addressing: <bucket>.s3.localhost ------------------------------------
# The test machine resolves no *.s3.localhost names: the request keeps its
# signed Host header and is sent to the endpoint's address instead.
endpoint = os.environ["S3_ENDPOINT"]
port = endpoint.rsplit(":", 1)[1]


def to_loopback(request, **_):
    url = urllib.parse.urlsplit(request.url)
    request.headers["Host"] = url.netloc
    request.url = urllib.parse.urlunsplit(url._replace(netloc=f"127.0.0.1:{port}"))


vh = boto3.client(
    "s3",
    endpoint_url=f"http://s3.localhost:{port}",
    aws_access_key_id=os.environ["S3_KEY_ID"],
    aws_secret_access_key=os.environ["S3_SECRET"],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "virtual"}, retries={"max_attempts": 1}),
)
seen_hosts = []
vh.meta.events.register("before-send.s3", lambda request, **_: seen_hosts.append(request.url))
vh.meta.events.register("before-send.s3", to_loopback)
vh.put_object(Bucket=B, Key="vh/one.txt", Body=b"virtual")
assert vh.get_object(Bucket=B, Key="vh/one.txt")["Body"].read() == b"virtual"
assert [o["Key"] for o in vh.list_objects_v2(Bucket=B, Prefix="vh/")["Contents"]] == ["vh/one.txt"]
assert s3.get_object(Bucket=B, Key="vh/one.txt")["Body"].read() == b"virtual"
assert code_of(vh.get_object, Bucket="no-such-bucket-vh", Key="k") == "NoSuchBucket"
assert all(u.startswith(f"http://{B}.s3.localhost:{port}/") or "no-such-bucket-vh" in u
           for u in seen_hosts), seen_hosts

# ---- public-read buckets: anonymous object reads only ----------------------------------------
def anonymous(method, path, headers=None, body=None):
    req = urllib.request.Request(endpoint + path, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


s3.put_object(Bucket=B, Key="pub/page.html", Body=b"<p>hi</p>", ContentType="text/html")
assert anonymous("GET", f"/{B}/pub/page.html")[0] == 403
acl = s3.get_bucket_acl(Bucket=B)
assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"], acl
s3.put_bucket_acl(Bucket=B, ACL="public-read")
acl = s3.get_bucket_acl(Bucket=B)
assert any(g["Grantee"].get("URI", "").endswith("/AllUsers") and g["Permission"] == "READ"
           for g in acl["Grants"]), acl
status, body, headers = anonymous("GET", f"/{B}/pub/page.html")
assert (status, body) == (200, b"<p>hi</p>") and headers["content-type"] == "text/html", (status, body)
assert anonymous("HEAD", f"/{B}/pub/page.html")[0] == 200
assert anonymous("PUT", f"/{B}/pub/evil.html", body=b"x")[0] == 403
assert anonymous("DELETE", f"/{B}/pub/page.html")[0] == 403
assert anonymous("GET", f"/{B}?list-type=2")[0] == 403
assert anonymous("GET", f"/{B2}/copy.bin")[0] == 403, "a private bucket answered an anonymous read"
assert anonymous("GET", "/no-such-bucket-anon/k")[0] == 403
assert code_of(s3.put_bucket_acl, Bucket=B, ACL="public-read-write") == "NotImplemented"
s3.put_bucket_acl(Bucket=B, ACL="private")
assert anonymous("GET", f"/{B}/pub/page.html")[0] == 403

# ---- CORS ----------------------------------------------------------------------------------------
assert code_of(s3.get_bucket_cors, Bucket=B) == "NoSuchCORSConfiguration"
s3.put_bucket_cors(Bucket=B, CORSConfiguration={"CORSRules": [{
    "AllowedOrigins": ["https://*.example.com"], "AllowedMethods": ["GET", "PUT"],
    "AllowedHeaders": ["content-type", "x-amz-*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 600}]})
rules = s3.get_bucket_cors(Bucket=B)["CORSRules"]
assert rules[0]["AllowedOrigins"] == ["https://*.example.com"] and rules[0]["MaxAgeSeconds"] == 600, rules
assert code_of(s3.put_bucket_cors, Bucket=B, CORSConfiguration={"CORSRules": [{
    "AllowedOrigins": ["*"], "AllowedMethods": ["PATCH"]}]}) == "InvalidRequest"
ok = anonymous("OPTIONS", f"/{B}/pub/page.html", {
    "Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT",
    "Access-Control-Request-Headers": "content-type, x-amz-date"})
assert ok[0] == 200, ok
assert ok[2]["access-control-allow-origin"] == "https://app.example.com", ok[2]
assert "PUT" in ok[2]["access-control-allow-methods"] and ok[2]["access-control-max-age"] == "600", ok[2]
assert anonymous("OPTIONS", f"/{B}/pub/page.html", {
    "Origin": "https://evil.test", "Access-Control-Request-Method": "GET"})[0] == 403
assert anonymous("OPTIONS", f"/{B}/pub/page.html", {
    "Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"})[0] == 403
assert anonymous("OPTIONS", f"/{B}/pub/page.html", {
    "Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT",
    "Access-Control-Request-Headers": "authorization"})[0] == 403
signed_cors = []
s3.meta.events.register("before-send.s3", lambda request, **_: request.headers.__setitem__(
    "Origin", "https://app.example.com"))
s3.meta.events.register("after-call.s3.GetObject", lambda http_response, **_: signed_cors.append(
    http_response.headers.get("access-control-allow-origin")))
s3.get_object(Bucket=B, Key="pub/page.html")["Body"].read()
assert signed_cors == ["https://app.example.com"], signed_cors
s3.delete_bucket_cors(Bucket=B)
assert code_of(s3.get_bucket_cors, Bucket=B) == "NoSuchCORSConfiguration"

# ---- ListMultipartUploads with a delimiter, page by page ----------------------------------------
ids = {k: s3.create_multipart_upload(Bucket=B, Key=k)["UploadId"]
       for k in ["mpl/a/1", "mpl/a/2", "mpl/b/1", "mpl/c", "mpl/d"]}
l = s3.list_multipart_uploads(Bucket=B, Prefix="mpl/", Delimiter="/")
assert [p["Prefix"] for p in l["CommonPrefixes"]] == ["mpl/a/", "mpl/b/"], l
assert [u["Key"] for u in l["Uploads"]] == ["mpl/c", "mpl/d"] and not l["IsTruncated"], l
seen, kw = [], {}
while True:
    page = s3.list_multipart_uploads(Bucket=B, Prefix="mpl/", Delimiter="/", MaxUploads=1, **kw)
    seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [u["Key"] for u in page.get("Uploads", [])]
    if not page["IsTruncated"]:
        break
    kw = {"KeyMarker": page["NextKeyMarker"]}
    if page.get("NextUploadIdMarker"):
        kw["UploadIdMarker"] = page["NextUploadIdMarker"]
assert seen == ["mpl/a/", "mpl/b/", "mpl/c", "mpl/d"], seen
for k, uid in ids.items():
    s3.abort_multipart_upload(Bucket=B, Key=k, UploadId=uid)

# ---- oversized XML: refused by our own limit, nothing deleted ----------------------------------
huge = {"Objects": [{"Key": f"{i:05d}-" + "k" * 1000} for i in range(5000)] + [{"Key": "c.txt"}]}
assert error_of(s3.delete_objects, Bucket=B, Delete=huge) == ("MaxMessageLengthExceeded", 400)
assert s3.get_object(Bucket=B, Key="c.txt")["Body"].read() == b"two"
bomb = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        '<Delete><Object><Key>&b;</Key></Object></Delete>').encode()
status = None
try:
    s3.meta.events.register_first("before-sign.s3.DeleteObjects",
                                   lambda request, **_: setattr(request, "data", bomb) or None,
                                   unique_id="xml-bomb")
    s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": "c.txt"}]})
except ClientError as e:
    status = e.response["Error"]["Code"]
finally:
    s3.meta.events.unregister("before-sign.s3.DeleteObjects", unique_id="xml-bomb")
assert status == "MalformedXML", status
assert s3.get_object(Bucket=B, Key="c.txt")["Body"].read() == b"two"


# ---- XML bodies sent chunked (no Content-Length) are refused whole ----------------------------
def chunked(request, **_):
    body = request.body
    if isinstance(body, (bytes, bytearray)):
        request.body = (bytes(body[i:i + 65536]) for i in range(0, len(body), 65536))
    request.headers.pop("Content-Length", None)
    request.headers["Transfer-Encoding"] = "chunked"


for op in ("DeleteObjects", "PutBucketTagging"):
    s3.meta.events.register_first(f"before-send.s3.{op}", chunked, unique_id=f"chunked-{op}")
try:
    # As S3 does, before reading any of it (it used to be read up to the
    # wire crate's own limit, then answered 500).
    assert error_of(s3.delete_objects, Bucket=B, Delete=huge) == ("MissingContentLength", 411)
    assert error_of(s3.delete_objects, Bucket=B,
                    Delete={"Objects": [{"Key": "c.txt"}]}) == ("MissingContentLength", 411)
    assert s3.get_object(Bucket=B, Key="c.txt")["Body"].read() == b"two"
    assert error_of(s3.put_bucket_tagging, Bucket=B,
                    Tagging={"TagSet": [{"Key": "sent", "Value": "chunked"}]}) == ("MissingContentLength", 411)
    assert code_of(s3.get_bucket_tagging, Bucket=B) == "NoSuchTagSet"
finally:
    for op in ("DeleteObjects", "PutBucketTagging"):
        s3.meta.events.unregister(f"before-send.s3.{op}", unique_id=f"chunked-{op}")

# ---- SSE-C: a client-held key layered over the project key ---------------------------------------
ck = bytes(range(32))
wrong = bytes(range(1, 33))
sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": ck}
r = s3.put_object(Bucket=B, Key="ssec.bin", Body=data, **sse)
assert r["SSECustomerKeyMD5"] == b64(hashlib.md5(ck).digest()), r
assert s3.get_object(Bucket=B, Key="ssec.bin", **sse)["Body"].read() == data
assert s3.head_object(Bucket=B, Key="ssec.bin", **sse)["ContentLength"] == len(data)
assert error_of(s3.get_object, Bucket=B, Key="ssec.bin") == ("InvalidRequest", 400)
assert error_of(s3.head_object, Bucket=B, Key="ssec.bin")[1] == 400
assert error_of(s3.get_object, Bucket=B, Key="ssec.bin", SSECustomerAlgorithm="AES256",
                SSECustomerKey=wrong) == ("AccessDenied", 403)
assert error_of(s3.get_object, Bucket=B, Key="c.txt", **sse) == ("InvalidRequest", 400)
part = s3.get_object(Bucket=B, Key="ssec.bin", Range="bytes=100-199", **sse)["Body"].read()
assert part == data[100:200]
# multipart under SSE-C: every part needs the upload's key
up = s3.create_multipart_upload(Bucket=B, Key="ssec-mp.bin", **sse)
uid = up["UploadId"]
assert code_of(s3.upload_part, Bucket=B, Key="ssec-mp.bin", UploadId=uid, PartNumber=1,
               Body=b"x") == "InvalidRequest"
assert code_of(s3.upload_part, Bucket=B, Key="ssec-mp.bin", UploadId=uid, PartNumber=1, Body=b"x",
               SSECustomerAlgorithm="AES256", SSECustomerKey=wrong) == "AccessDenied"
e1 = s3.upload_part(Bucket=B, Key="ssec-mp.bin", UploadId=uid, PartNumber=1, Body=big[:5 * MiB], **sse)["ETag"]
e2 = s3.upload_part(Bucket=B, Key="ssec-mp.bin", UploadId=uid, PartNumber=2, Body=b"tail", **sse)["ETag"]
s3.complete_multipart_upload(Bucket=B, Key="ssec-mp.bin", UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
got = s3.get_object(Bucket=B, Key="ssec-mp.bin", Range=f"bytes={5 * MiB - 3}-{5 * MiB + 1}", **sse)["Body"].read()
assert got == big[5 * MiB - 3:5 * MiB] + b"ta", got
assert code_of(s3.get_object, Bucket=B, Key="ssec-mp.bin") == "InvalidRequest"
# copies: SSE-C source to a plain target, and a plain source to an SSE-C target
s3.copy_object(Bucket=B, Key="ssec-plain.bin", CopySource=f"{B}/ssec.bin",
               CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=ck)
assert s3.get_object(Bucket=B, Key="ssec-plain.bin")["Body"].read() == data
assert code_of(s3.copy_object, Bucket=B, Key="x", CopySource=f"{B}/ssec.bin") == "InvalidRequest"
s3.copy_object(Bucket=B, Key="ssec-again.bin", CopySource=f"{B}/src.bin", **sse)
assert s3.get_object(Bucket=B, Key="ssec-again.bin", **sse)["Body"].read() == data
assert code_of(s3.get_object, Bucket=B, Key="ssec-again.bin") == "InvalidRequest"

# ---- tags of one version of a versioned bucket -----------------------------------------------------
VB = "obj-tags-versioned"
s3.create_bucket(Bucket=VB)
s3.put_bucket_versioning(Bucket=VB, VersioningConfiguration={"Status": "Enabled"})
v1 = s3.put_object(Bucket=VB, Key="k", Body=b"1", Tagging="gen=one")["VersionId"]
v2 = s3.put_object(Bucket=VB, Key="k", Body=b"2", Tagging="gen=two")["VersionId"]
assert s3.get_object_tagging(Bucket=VB, Key="k")["TagSet"] == [{"Key": "gen", "Value": "two"}]
old_tags = s3.get_object_tagging(Bucket=VB, Key="k", VersionId=v1)
assert old_tags["TagSet"] == [{"Key": "gen", "Value": "one"}] and old_tags["VersionId"] == v1, old_tags
r = s3.put_object_tagging(Bucket=VB, Key="k", VersionId=v1, Tagging={"TagSet": [{"Key": "gen", "Value": "re"}]})
assert r["VersionId"] == v1, r
assert s3.get_object_tagging(Bucket=VB, Key="k", VersionId=v1)["TagSet"] == [{"Key": "gen", "Value": "re"}]
assert s3.get_object_tagging(Bucket=VB, Key="k")["TagSet"] == [{"Key": "gen", "Value": "two"}]
s3.delete_object_tagging(Bucket=VB, Key="k", VersionId=v2)
assert s3.get_object_tagging(Bucket=VB, Key="k")["TagSet"] == []
assert s3.get_object(Bucket=VB, Key="k", VersionId=v1)["Body"].read() == b"1"
assert code_of(s3.get_object_tagging, Bucket=VB, Key="k", VersionId="obv_0000") in ("NoSuchVersion", "InvalidArgument")
for v in (v1, v2):
    s3.delete_object(Bucket=VB, Key="k", VersionId=v)
s3.delete_bucket(Bucket=VB)

# ---- concurrent changes of different bucket settings all land ------------------------------------
import threading

for round_ in range(8):
    errors = []

    def run(fn, **kw):
        try:
            fn(**kw)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(s3.put_bucket_tagging,),
                         kwargs=dict(Bucket=B2, Tagging={"TagSet": [{"Key": "round", "Value": str(round_)}]})),
        threading.Thread(target=run, args=(s3.put_bucket_cors,),
                         kwargs=dict(Bucket=B2, CORSConfiguration={"CORSRules": [
                             {"AllowedOrigins": [f"https://r{round_}.example"], "AllowedMethods": ["GET"]}]})),
        threading.Thread(target=run, args=(s3.put_bucket_acl,),
                         kwargs=dict(Bucket=B2, ACL="public-read" if round_ % 2 else "private")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert s3.get_bucket_tagging(Bucket=B2)["TagSet"] == [{"Key": "round", "Value": str(round_)}]
    assert s3.get_bucket_cors(Bucket=B2)["CORSRules"][0]["AllowedOrigins"] == [f"https://r{round_}.example"]
    public = any(g["Grantee"].get("URI") for g in s3.get_bucket_acl(Bucket=B2)["Grants"])
    assert public == bool(round_ % 2), round_
s3.put_bucket_acl(Bucket=B2, ACL="private")

# ---- another organization learns nothing about these buckets -----------------------------------
rival = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=os.environ["S3_OTHER_KEY_ID"],
    aws_secret_access_key=os.environ["S3_OTHER_SECRET"],
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
rival.create_bucket(Bucket="rival-own")
rival.put_object(Bucket="rival-own", Key="r.txt", Body=b"r")
calls = [
    (rival.get_object_tagging, dict(Bucket=B, Key="t.txt")),
    (rival.put_object_tagging, dict(Bucket=B, Key="t.txt", Tagging={"TagSet": []})),
    (rival.delete_object_tagging, dict(Bucket=B, Key="t.txt")),
    (rival.get_bucket_tagging, dict(Bucket=B)),
    (rival.put_bucket_tagging, dict(Bucket=B, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})),
    (rival.delete_bucket_tagging, dict(Bucket=B)),
    (rival.get_bucket_encryption, dict(Bucket=B)),
    (rival.get_bucket_acl, dict(Bucket=B)),
    (rival.put_bucket_acl, dict(Bucket=B, ACL="public-read")),
    (rival.get_bucket_cors, dict(Bucket=B)),
    (rival.put_bucket_cors, dict(Bucket=B, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["*"], "AllowedMethods": ["GET"]}]})),
    (rival.delete_bucket_cors, dict(Bucket=B)),
    (rival.copy_object, dict(Bucket="rival-own", Key="stolen", CopySource=f"{B}/src.bin")),
    (rival.copy_object, dict(Bucket=B, Key="planted", CopySource="rival-own/r.txt")),
    (rival.put_object, dict(Bucket=B, Key="planted", Body=b"x", IfNoneMatch="*")),
    (rival.head_object, dict(Bucket=B, Key="c.txt", IfModifiedSince=before)),
]
for fn, kwargs in calls:
    code = code_of(fn, **kwargs)
    assert code in ("NoSuchBucket", "404"), (fn.__name__, kwargs, code)
up = rival.create_multipart_upload(Bucket="rival-own", Key="m")
assert code_of(rival.upload_part_copy, Bucket="rival-own", Key="m", UploadId=up["UploadId"], PartNumber=1,
               CopySource=f"{B}/src.bin") == "NoSuchBucket"
rival.abort_multipart_upload(Bucket="rival-own", Key="m", UploadId=up["UploadId"])
assert code_of(s3.head_object, Bucket=B, Key="planted") == "404"
assert code_of(s3.get_bucket_tagging, Bucket=B) == "NoSuchTagSet"
assert not any(g["Grantee"].get("URI") for g in s3.get_bucket_acl(Bucket=B)["Grants"])
rival.delete_object(Bucket="rival-own", Key="r.txt")
rival.delete_bucket(Bucket="rival-own")

# ---- clean up ------------------------------------------------------------------------------
for bucket in (B, B2):
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    s3.delete_bucket(Bucket=bucket)
print("boto3 objects: ok")
