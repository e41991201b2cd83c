"""Bucket versioning (and lifecycle configuration) through boto3 against the
nuage S3 endpoint: version ids, delete markers, reads and deletes of one
version, ListObjectVersions with its pagination, suspension, and the
lifecycle rules' validation. Run by crates/nuage/tests/api/s3.rs; prints
'boto3 versioning: ok' on success."""

import datetime
import os
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["S3_ENDPOINT"]
KEY_ID = os.environ["S3_KEY_ID"]
SECRET = os.environ["S3_SECRET"]

s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    aws_access_key_id=KEY_ID,
    aws_secret_access_key=SECRET,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)


def error_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response
    raise AssertionError(f"{fn.__name__} succeeded")


def code_of(fn, *args, **kwargs):
    return error_of(fn, *args, **kwargs)["Error"]["Code"]


def body(key, **kw):
    return s3.get_object(Bucket=B, Key=key, **kw)["Body"].read()


def all_versions(bucket, **kw):
    """Every version and marker, following the markers one small page at a time."""
    out, pages, args = [], 0, dict(kw)
    while True:
        r = s3.list_object_versions(Bucket=bucket, **args)
        pages += 1
        entries = [("v", v["Key"], v["VersionId"], v["IsLatest"]) for v in r.get("Versions", [])]
        entries += [("m", m["Key"], m["VersionId"], m["IsLatest"]) for m in r.get("DeleteMarkers", [])]
        out += entries
        assert len(entries) + len(r.get("CommonPrefixes", [])) <= args.get("MaxKeys", 1000), r
        if not r["IsTruncated"]:
            return out, pages
        args["KeyMarker"] = r["NextKeyMarker"]
        if "NextVersionIdMarker" in r:
            args["VersionIdMarker"] = r["NextVersionIdMarker"]
        else:
            args.pop("VersionIdMarker", None)


B = "versioned-bucket"
s3.create_bucket(Bucket=B)

# never versioned: no status, no version ids, versions listed as "null"
assert "Status" not in s3.get_bucket_versioning(Bucket=B)
r = s3.put_object(Bucket=B, Key="k", Body=b"v0")
assert "VersionId" not in r, r
assert "VersionId" not in s3.get_object(Bucket=B, Key="k")
v = s3.list_object_versions(Bucket=B)["Versions"]
assert [(x["Key"], x["VersionId"], x["IsLatest"]) for x in v] == [("k", "null", True)], v
r = s3.delete_object(Bucket=B, Key="gone-anyway")
assert "DeleteMarker" not in r and "VersionId" not in r, r
assert code_of(s3.put_bucket_versioning, Bucket=B,
               VersioningConfiguration={"Status": "Sometimes"}) == "MalformedXML"

# enabled: every write keeps the older versions
s3.put_bucket_versioning(Bucket=B, VersioningConfiguration={"Status": "Enabled"})
assert s3.get_bucket_versioning(Bucket=B)["Status"] == "Enabled"
ids = [s3.put_object(Bucket=B, Key="k", Body=b"v%d" % i)["VersionId"] for i in (1, 2, 3)]
assert len(set(ids)) == 3 and "null" not in ids, ids
g = s3.get_object(Bucket=B, Key="k")
assert g["Body"].read() == b"v3" and g["VersionId"] == ids[2], g
assert body("k", VersionId=ids[0]) == b"v1"
assert body("k", VersionId="null") == b"v0"  # written before versioning
assert s3.head_object(Bucket=B, Key="k", VersionId=ids[1])["VersionId"] == ids[1]
assert code_of(s3.get_object, Bucket=B, Key="k", VersionId="not-a-version") == "InvalidArgument"
assert code_of(s3.get_object, Bucket=B, Key="k",
               VersionId="obv_" + "0" * 32) == "NoSuchVersion"
v = s3.list_object_versions(Bucket=B, Prefix="k")["Versions"]
assert [(x["VersionId"], x["IsLatest"]) for x in v] == [
    (ids[2], True), (ids[1], False), (ids[0], False), ("null", False)], v
assert [x["Size"] for x in v] == [2, 2, 2, 2]

# a plain DELETE adds a delete marker; the key looks gone
d = s3.delete_object(Bucket=B, Key="k")
assert d["DeleteMarker"] is True and d["VersionId"] not in ids + ["null"], d
marker = d["VersionId"]
e = error_of(s3.get_object, Bucket=B, Key="k")
assert e["Error"]["Code"] == "NoSuchKey", e
assert e["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker") == "true", e
assert e["ResponseMetadata"]["HTTPHeaders"].get("x-amz-version-id") == marker, e
e = error_of(s3.head_object, Bucket=B, Key="k")
assert e["ResponseMetadata"]["HTTPStatusCode"] == 404, e
assert e["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker") == "true", e
e = error_of(s3.get_object, Bucket=B, Key="k", VersionId=marker)
assert e["Error"]["Code"] == "MethodNotAllowed", e
assert e["ResponseMetadata"]["HTTPStatusCode"] == 405, e
assert body("k", VersionId=ids[1]) == b"v2"
assert "Contents" not in s3.list_objects_v2(Bucket=B), "a deleted key is not listed"
assert "Contents" not in s3.list_objects(Bucket=B)
r = s3.list_object_versions(Bucket=B)
assert [(m["Key"], m["VersionId"], m["IsLatest"]) for m in r["DeleteMarkers"]] == [
    ("k", marker, True)], r
assert all(not x["IsLatest"] for x in r["Versions"]), r

# deleting the marker by id brings the object back; deleting the current
# version promotes the previous one
d = s3.delete_object(Bucket=B, Key="k", VersionId=marker)
assert d.get("DeleteMarker") is True and d["VersionId"] == marker, d
assert body("k") == b"v3"
d = s3.delete_object(Bucket=B, Key="k", VersionId=ids[2])
assert d["VersionId"] == ids[2] and "DeleteMarker" not in d, d
g = s3.get_object(Bucket=B, Key="k")
assert g["Body"].read() == b"v2" and g["VersionId"] == ids[1]
assert code_of(s3.get_object, Bucket=B, Key="k", VersionId=ids[2]) == "NoSuchVersion"
v = s3.list_object_versions(Bucket=B, Prefix="k")["Versions"]
assert [(x["VersionId"], x["IsLatest"]) for x in v] == [
    (ids[1], True), (ids[0], False), ("null", False)], v
# deleting a version that is not there succeeds, as S3 does
s3.delete_object(Bucket=B, Key="k", VersionId="obv_" + "0" * 32)

# a multipart upload completes as a new version too
up = s3.create_multipart_upload(Bucket=B, Key="k")["UploadId"]
p1 = s3.upload_part(Bucket=B, Key="k", UploadId=up, PartNumber=1, Body=b"multi")
c = s3.complete_multipart_upload(Bucket=B, Key="k", UploadId=up, MultipartUpload={
    "Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}]})
assert c["VersionId"] not in ids, c
assert body("k") == b"multi" and body("k", VersionId=ids[1]) == b"v2"
assert body("k", VersionId=c["VersionId"]) == b"multi"

# ListObjectVersions pagination: keys in byte order, newest first within
# a key, delete markers apart, small pages following both markers
expect = []
for name in ["p/a", "p/b", "p/c", "q/x", "r"]:
    vids = [s3.put_object(Bucket=B, Key=name, Body=name.encode() + b"%d" % i)["VersionId"]
            for i in range(3)]
    entries = [("v", name, vid) for vid in reversed(vids)]
    if name in ("p/b", "r"):
        m = s3.delete_object(Bucket=B, Key=name)["VersionId"]
        entries.insert(0, ("m", name, m))
    expect += entries
full, pages = all_versions(B, Prefix="p/")
assert pages == 1
got = [(t, k, vid) for (t, k, vid, _) in full]
want = [e for e in expect if e[1].startswith("p/")]
# within one response versions and markers come in two lists: compare per key
assert sorted(got) == sorted(want), (got, want)
for max_keys in (1, 2, 4, 5):
    paged, pages = all_versions(B, MaxKeys=max_keys)
    flat = [(t, k, vid) for (t, k, vid, _) in paged]
    everything = [e for e in expect] + [("v", "k", x) for x in
                                        (c["VersionId"], ids[1], ids[0], "null")]
    assert sorted(flat) == sorted(everything), (max_keys, flat)
    assert len(flat) == len(everything), "no entry twice"
    assert pages >= len(everything) // max_keys, (max_keys, pages)
    keys = [k for (_, k, _) in flat]
    assert keys == sorted(keys), keys
# the same through boto3's own paginator, with latest flags
pg = s3.get_paginator("list_object_versions")
seen = []
for page in pg.paginate(Bucket=B, Prefix="p/b", PaginationConfig={"PageSize": 2}):
    seen += [("v", v["VersionId"], v["IsLatest"]) for v in page.get("Versions", [])]
    seen += [("m", m["VersionId"], m["IsLatest"]) for m in page.get("DeleteMarkers", [])]
assert len(seen) == 4 and [x for x in seen if x[2]] == [x for x in seen if x[0] == "m"], seen
# newest first within one key across pages
order = [x[1] for x in seen if x[0] == "v"]
assert order == [e[2] for e in expect if e[1] == "p/b" and e[0] == "v"], order
# delimiter: common prefixes roll up every version below them
r = s3.list_object_versions(Bucket=B, Delimiter="/")
assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["p/", "q/"], r
assert {v["Key"] for v in r["Versions"]} == {"k", "r"}, r
rolled, pages = all_versions(B, Delimiter="/", MaxKeys=1)
assert pages >= 4
r = s3.list_object_versions(Bucket=B, KeyMarker="p/", Delimiter="/")
assert [p["Prefix"] for p in r.get("CommonPrefixes", [])] == ["q/"], r
assert code_of(s3.list_object_versions, Bucket=B, VersionIdMarker=ids[0]) == "InvalidArgument"
r = s3.list_object_versions(Bucket=B, MaxKeys=0)
assert not r["IsTruncated"] and not r.get("Versions"), r

# DeleteObjects naming versions (and a marker)
pb = [e for e in expect if e[1] == "p/b"]
r = s3.delete_objects(Bucket=B, Delete={"Objects": [
    {"Key": "p/b", "VersionId": pb[0][2]},  # the marker
    {"Key": "p/b", "VersionId": pb[1][2]},  # the newest object version
    {"Key": "p/c"},                         # a plain delete: a new marker
]})
assert not r.get("Errors"), r
by = {(d["Key"], d.get("VersionId")): d for d in r["Deleted"]}
assert by[("p/b", pb[0][2])].get("DeleteMarker") is True, r
assert "DeleteMarker" not in by[("p/b", pb[1][2])], r
assert by[("p/c", None)]["DeleteMarker"] is True and by[("p/c", None)]["DeleteMarkerVersionId"], r
assert body("p/b") == b"p/b1"
assert code_of(s3.get_object, Bucket=B, Key="p/c") == "NoSuchKey"

# CopyObject: the copy is a new version and the source version is reported;
# copying a named older version onto its own key restores it
src = [s3.put_object(Bucket=B, Key="cp/src", Body=b"c%d" % i)["VersionId"] for i in (1, 2)]
cp = s3.copy_object(Bucket=B, Key="cp/dst",
                    CopySource={"Bucket": B, "Key": "cp/src", "VersionId": src[0]})
assert cp["CopySourceVersionId"] == src[0] and cp["VersionId"] not in src, cp
assert body("cp/dst") == b"c1" and body("cp/dst", VersionId=cp["VersionId"]) == b"c1"
cp2 = s3.copy_object(Bucket=B, Key="cp/dst", CopySource={"Bucket": B, "Key": "cp/src"})
assert cp2["CopySourceVersionId"] == src[1] and cp2["VersionId"] != cp["VersionId"], cp2
assert body("cp/dst") == b"c2" and body("cp/dst", VersionId=cp["VersionId"]) == b"c1"
r = s3.copy_object(Bucket=B, Key="cp/src",
                   CopySource={"Bucket": B, "Key": "cp/src", "VersionId": src[0]})
assert r["VersionId"] not in src and body("cp/src") == b"c1", r
assert len(s3.list_object_versions(Bucket=B, Prefix="cp/src")["Versions"]) == 3
assert code_of(s3.copy_object, Bucket=B, Key="cp/x", CopySource={
    "Bucket": B, "Key": "cp/src", "VersionId": "obv_" + "0" * 32}) == "NoSuchVersion"
# behind a delete marker the key is gone for copies, and absent for a
# conditional PUT (If-None-Match: *)
s3.delete_object(Bucket=B, Key="cp/src")
assert code_of(s3.copy_object, Bucket=B, Key="cp/x",
               CopySource={"Bucket": B, "Key": "cp/src"}) == "NoSuchKey"
s3.put_object(Bucket=B, Key="cp/src", Body=b"again", IfNoneMatch="*")
assert code_of(s3.put_object, Bucket=B, Key="cp/src", Body=b"no",
               IfNoneMatch="*") == "PreconditionFailed"
assert body("cp/src") == b"again"
# tags belong to the current version
s3.put_object_tagging(Bucket=B, Key="cp/src", Tagging={"TagSet": [{"Key": "t", "Value": "1"}]})
assert s3.get_object_tagging(Bucket=B, Key="cp/src")["TagSet"] == [{"Key": "t", "Value": "1"}]

# concurrent writers of one key: every version kept, exactly one latest,
# and the latest is what a plain GET reads
def writer(n):
    return [s3.put_object(Bucket=B, Key="race", Body=b"w%d-%d" % (n, i))["VersionId"]
            for i in range(5)]


with ThreadPoolExecutor(8) as pool:
    written = [v for vs in pool.map(writer, range(8)) for v in vs]
race = s3.list_object_versions(Bucket=B, Prefix="race")["Versions"]
assert sorted(v["VersionId"] for v in race) == sorted(written), race
latest = [v for v in race if v["IsLatest"]]
assert len(latest) == 1 and race[0] == latest[0], race
assert s3.get_object(Bucket=B, Key="race")["VersionId"] == latest[0]["VersionId"]

# suspended: new writes are the "null" version, replacing the previous one
s3.put_bucket_versioning(Bucket=B, VersioningConfiguration={"Status": "Suspended"})
assert s3.get_bucket_versioning(Bucket=B)["Status"] == "Suspended"
r1 = s3.put_object(Bucket=B, Key="k", Body=b"s1")
assert r1["VersionId"] == "null", r1
r2 = s3.put_object(Bucket=B, Key="k", Body=b"s2")
assert r2["VersionId"] == "null"
v = s3.list_object_versions(Bucket=B, Prefix="k")["Versions"]
assert [(x["VersionId"], x["IsLatest"]) for x in v] == [
    ("null", True), (c["VersionId"], False), (ids[1], False), (ids[0], False)], v
assert body("k") == b"s2" and s3.get_object(Bucket=B, Key="k")["VersionId"] == "null"
d = s3.delete_object(Bucket=B, Key="k")
assert d["DeleteMarker"] is True and d["VersionId"] == "null", d
r = s3.list_object_versions(Bucket=B, Prefix="k")
assert [(m["VersionId"], m["IsLatest"]) for m in r["DeleteMarkers"]] == [("null", True)], r
assert len(r["Versions"]) == 3, "the null object version was replaced by the null marker"
assert body("k", VersionId=ids[0]) == b"v1"

# a bucket with versions or markers left cannot go
assert code_of(s3.delete_bucket, Bucket=B) == "BucketNotEmpty"
for _ in range(3):
    everything, _ = all_versions(B)
    if not everything:
        break
    s3.delete_objects(Bucket=B, Delete={"Objects": [
        {"Key": k, "VersionId": vid} for (_, k, vid, _) in everything]})
assert all_versions(B)[0] == []
s3.delete_bucket(Bucket=B)

# an unversioned bucket: DELETE with VersionId "null" removes the object
U = "plain-bucket"
s3.create_bucket(Bucket=U)
s3.put_object(Bucket=U, Key="x", Body=b"x")
s3.put_object(Bucket=U, Key="x", Body=b"y")
assert len(s3.list_object_versions(Bucket=U)["Versions"]) == 1
s3.delete_object(Bucket=U, Key="x", VersionId="null")
assert code_of(s3.head_object, Bucket=U, Key="x") == "404"
assert "Versions" not in s3.list_object_versions(Bucket=U) or \
    s3.list_object_versions(Bucket=U)["Versions"] == []

# lifecycle configuration: round trip and AWS's validation
assert code_of(s3.get_bucket_lifecycle_configuration, Bucket=U) == \
    "NoSuchLifecycleConfiguration"
midnight = datetime.datetime(2031, 1, 1, tzinfo=datetime.timezone.utc)
rules = [
    {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
     "Expiration": {"Days": 30},
     "NoncurrentVersionExpiration": {"NoncurrentDays": 7, "NewerNoncurrentVersions": 2},
     "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}},
    {"ID": "markers", "Status": "Disabled", "Filter": {},
     "Expiration": {"ExpiredObjectDeleteMarker": True}},
    {"ID": "dated", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
     "Expiration": {"Date": midnight}},
]
s3.put_bucket_lifecycle_configuration(Bucket=U, LifecycleConfiguration={"Rules": rules})
got = s3.get_bucket_lifecycle_configuration(Bucket=U)["Rules"]
assert [r["ID"] for r in got] == ["logs", "markers", "dated"], got
assert got[0]["Filter"] == {"Prefix": "logs/"} and got[0]["Expiration"] == {"Days": 30}, got
assert got[0]["NoncurrentVersionExpiration"] == {
    "NoncurrentDays": 7, "NewerNoncurrentVersions": 2}, got
assert got[0]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 3}, got
assert got[1]["Status"] == "Disabled" and got[1]["Expiration"] == {
    "ExpiredObjectDeleteMarker": True}, got
assert got[2]["Expiration"]["Date"] == midnight, got


def bad(rule):
    return code_of(s3.put_bucket_lifecycle_configuration, Bucket=U,
                   LifecycleConfiguration={"Rules": [rule]})


base = {"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""}}
assert bad({**base, "Filter": {"Tag": {"Key": "a", "Value": "b"}},
            "Expiration": {"Days": 1}}) == "NotImplemented"
assert bad({**base, "Filter": {"ObjectSizeGreaterThan": 10},
            "Expiration": {"Days": 1}}) == "NotImplemented"
assert bad({**base, "Filter": {"And": {"Prefix": "a/", "Tags": [{"Key": "a", "Value": "b"}]}},
            "Expiration": {"Days": 1}}) == "NotImplemented"
assert bad({**base, "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}) == \
    "NotImplemented"
assert bad({**base, "Expiration": {"Days": 0}}) == "InvalidArgument"
assert bad({**base, "Expiration": {"Days": 1, "ExpiredObjectDeleteMarker": True}}) == \
    "InvalidArgument"
assert bad({**base, "Expiration": {
    "Date": datetime.datetime(2031, 1, 1, 12, tzinfo=datetime.timezone.utc)}}) == \
    "InvalidArgument"
assert bad({**base, "NoncurrentVersionExpiration": {"NoncurrentDays": 0}}) == "InvalidArgument"
assert bad({**base, "NoncurrentVersionExpiration": {
    "NoncurrentDays": 1, "NewerNoncurrentVersions": 101}}) == "InvalidArgument"
assert bad({**base, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": -1}}) == \
    "InvalidArgument"
assert bad(base) == "InvalidRequest"  # no action
assert bad({**base, "Status": "Maybe", "Expiration": {"Days": 1}}) == "MalformedXML"
assert code_of(s3.put_bucket_lifecycle_configuration, Bucket=U, LifecycleConfiguration={
    "Rules": [{**base, "Expiration": {"Days": 1}}, {**base, "Expiration": {"Days": 2}}]}) == \
    "InvalidArgument"  # the same ID twice
assert code_of(s3.put_bucket_lifecycle_configuration, Bucket=U, LifecycleConfiguration={
    "Rules": [{**base, "ID": "r%d" % i, "Expiration": {"Days": 1}} for i in range(1001)]}) == \
    "MalformedXML"
# refused configurations changed nothing
assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=U)["Rules"]] == [
    "logs", "markers", "dated"]
s3.delete_bucket_lifecycle(Bucket=U)
assert code_of(s3.get_bucket_lifecycle_configuration, Bucket=U) == \
    "NoSuchLifecycleConfiguration"
s3.delete_bucket(Bucket=U)

print("boto3 versioning: ok")
