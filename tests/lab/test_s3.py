"""A real S3 client (boto3) drives the lab: SigV4 with the data set's key, refusals as S3 XML errors."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from garage_lab import traffic


@pytest.fixture(scope="module")
def lab(module_lab):
    return module_lab(version="0.8.7", zones=3, per_zone=1, wait_prometheus=False)


def code(exc_info) -> tuple[int, str]:
    err = exc_info.value.response
    return err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"]


def test_boto3_writes_reads_heads_lists_and_deletes_with_a_lab_key(lab):
    s3 = traffic.s3_client(lab, lab.nodes[1]["name"])
    put = s3.put_object(Bucket="bucket-01", Key="boto/a b+c.txt", Body=b"hello", ContentType="text/plain")
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200 and put["ETag"] == '"5d41402abc4b2a76b9719d911017c592"'
    other = traffic.s3_client(lab, lab.nodes[2]["name"])  # read through another node: quorum, not local state
    got = other.get_object(Bucket="bucket-01", Key="boto/a b+c.txt")
    assert got["Body"].read() == b"hello" and got["ContentType"] == "text/plain" and got["ETag"] == put["ETag"]
    head = other.head_object(Bucket="bucket-01", Key="boto/a b+c.txt")
    assert head["ContentLength"] == 5
    s3.put_object(Bucket="bucket-01", Key="boto/b", Body=b"x" * 3000)
    listed = other.list_objects_v2(Bucket="bucket-01", Prefix="boto/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("boto/a b+c.txt", 5), ("boto/b", 3000)]
    page = other.list_objects_v2(Bucket="bucket-01", Prefix="boto/", MaxKeys=1)
    assert page["IsTruncated"] and [o["Key"] for o in page["Contents"]] == ["boto/a b+c.txt"]
    rest = other.list_objects_v2(Bucket="bucket-01", Prefix="boto/", ContinuationToken=page["NextContinuationToken"])
    assert [o["Key"] for o in rest["Contents"]] == ["boto/b"] and not rest["IsTruncated"]
    # the data set's own objects are listed too (seeded entries, with computed ETags)
    assert other.list_objects_v2(Bucket="bucket-01")["KeyCount"] == lab.spec.objects_per_bucket + 2
    assert s3.delete_object(Bucket="bucket-01", Key="boto/b")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(ClientError) as e:
        other.get_object(Bucket="bucket-01", Key="boto/b")
    assert code(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert code(e) == (404, "NoSuchBucket")


def test_boto3_is_refused_with_a_wrong_key_or_secret(lab):
    creds = lab.s3_credentials
    unknown = traffic.s3_client(lab, access_key_id="GK" + "0" * 24, secret_access_key=creds["secret_access_key"])
    with pytest.raises(ClientError) as e:
        unknown.put_object(Bucket="bucket-00", Key="nope", Body=b"x")
    assert code(e) == (403, "InvalidAccessKeyId")
    wrong = traffic.s3_client(lab, secret_access_key="0" * 64)
    for call in (lambda: wrong.put_object(Bucket="bucket-00", Key="nope", Body=b"x"),
                 lambda: wrong.list_objects_v2(Bucket="bucket-00")):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == (403, "SignatureDoesNotMatch")
    # nothing was written by the refused requests
    with pytest.raises(ClientError) as e:
        traffic.s3_client(lab).head_object(Bucket="bucket-00", Key="nope")
    assert code(e)[0] == 404


def test_s3_errors_are_xml_and_anonymous_access_follows_the_knob(lab):
    import http.client

    def raw(method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(lab.nodes[0]["addr"], 3900, timeout=5)
        try:
            conn.request(method, path, body=b"x" if method == "PUT" else None)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    status, body = raw("PUT", "/bucket-00/anon")
    assert status == 200  # the lab's default: unsigned requests are served (checklist 9 sends one)
    name = lab.nodes[0]["name"]
    lab.set_knobs(name, s3_anonymous=0)
    try:
        import time

        deadline = time.monotonic() + 10  # the daemon re-reads its knobs within its 0.1 s tick
        while (res := raw("PUT", "/bucket-00/anon2"))[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, body = res
        assert status == 403, body
        assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'), body
        assert b"anonymous access" in body and b"<Resource>/bucket-00/anon2</Resource>" in body
    finally:
        lab.set_knobs(name, s3_anonymous=1)


def test_traffic_client_acknowledges_writes_that_verify_reads_back(lab):
    with traffic.Traffic(lab, rate=20, seed=7) as tr:
        import time

        deadline = time.monotonic() + 30
        while tr.acknowledged < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert tr.stopped_at is not None and tr.acknowledged >= 10 and tr.refused == 0, tr.report
    acks = lab.inspect(checksums=False)["acknowledged_writes"]
    assert acks and max(a["t"] for a in acks) <= tr.stopped_at
    assert traffic.verify(lab)["ok"]


def test_garage_lab_up_prints_the_s3_endpoint_and_a_key_and_traffic_uses_it(tmp_path, capsys):
    import json

    from garage_lab.cli import main
    from garage_lab.harness import Lab

    d = tmp_path / "cli-lab"
    try:
        assert main(["up", "--dir", str(d), "--zones", "3", "--per-zone", "1", "--version", "0.8.7"]) == 0
        out = json.loads(capsys.readouterr().out)
        lab = Lab(d)
        assert out["s3"]["endpoint"] == f"http://{lab.nodes[0]['addr']}:3900"
        assert out["s3"]["access_key_id"].startswith("GK") and len(out["s3"]["secret_access_key"]) == 64
        assert out["s3"]["region"] == "garage" and len(out["s3"]["endpoints"]) == 3
        # the printed key works with any S3 client
        s3 = traffic.s3_client(lab, access_key_id=out["s3"]["access_key_id"],
                               secret_access_key=out["s3"]["secret_access_key"])
        assert s3.list_objects_v2(Bucket="bucket-00")["KeyCount"] == lab.spec.objects_per_bucket
        assert main(["traffic", "--dir", str(d), "--duration", "1", "--rate", "5"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["acknowledged"] == report["attempted"] > 0
        assert main(["traffic", "--dir", str(d), "--verify"]) == 0
        assert json.loads(capsys.readouterr().out)["checked"] == report["acknowledged"]
    finally:
        if (d / "lab.json").exists():
            Lab(d).down()
