"""Credentials out of URIs, messages and printed data: `public_uri`, `redact`, `redact_data` (pure)."""

from __future__ import annotations

import pytest

from pipeline.io.secrets import MASK, public_uri, redact, redact_data
from pipeline.source.refs import make_video_id

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SIGNED = {
    "AWS SigV2": (
        f"https://b.s3.amazonaws.com/clips/a.mp4?AWSAccessKeyId={KEY_ID}&Signature=abc%2Bdef%3D&Expires=1700000000",
        "https://b.s3.amazonaws.com/clips/a.mp4",
        ("AWSAccessKeyId", "Signature", KEY_ID, "abc%2Bdef"),
    ),
    "AWS SigV4 with session token, keeping versionId": (
        "https://b.s3.us-east-1.amazonaws.com/clips/a.mp4?versionId=v3&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={KEY_ID}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z"
        "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZXIvYXdzEBYaDtoken"
        "&X-Amz-Signature=0f1e2d3c4b5a",
        "https://b.s3.us-east-1.amazonaws.com/clips/a.mp4?versionId=v3",
        ("X-Amz-", KEY_ID, "FwoGZXIvYXdzEBYaDtoken", "0f1e2d3c4b5a"),
    ),
    "GCS V4": (
        "https://storage.googleapis.com/b/a.mp4?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Credential=sa%40proj.iam.gserviceaccount.com%2F20260101%2Fauto%2Fstorage%2Fgoog4_request"
        "&X-Goog-Date=20260101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature=9a8b7c",
        "https://storage.googleapis.com/b/a.mp4",
        ("X-Goog-", "sa%40proj", "9a8b7c"),
    ),
    "GCS V2": (
        "https://storage.googleapis.com/b/a.mp4?GoogleAccessId=sa@proj.iam.gserviceaccount.com&Expires=1&Signature=zz%2F",
        "https://storage.googleapis.com/b/a.mp4",
        ("GoogleAccessId", "sa@proj", "zz%2F"),
    ),
    "Azure SAS": (
        "https://acct.blob.core.windows.net/c/a.mp4?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-01-01T00%3A00%3A00Z"
        "&st=2025-12-31&spr=https&sig=Zm9vYmFy%3D",
        "https://acct.blob.core.windows.net/c/a.mp4",
        ("sig=", "Zm9vYmFy", "se=", "sv="),
    ),
    "token parameter, keeping others and the fragment": (
        "https://cdn.example.com/shards/000.tar?v=2&access_token=ya29.secret-value#clip/a.mp4",
        "https://cdn.example.com/shards/000.tar?v=2#clip/a.mp4",
        ("access_token", "ya29.secret-value"),
    ),
    "user and password": (
        "https://alice:hunter2-password@videos.example.com/a.mp4",
        f"https://{MASK}@videos.example.com/a.mp4",
        ("alice", "hunter2-password"),
    ),
}


@pytest.mark.parametrize("name", list(SIGNED))
def test_public_uri_removes_every_signature_form(name: str) -> None:
    signed, public, secrets = SIGNED[name]
    assert public_uri(signed) == public
    assert public_uri(public) == public  # idempotent
    for secret in secrets:
        assert secret not in public
        assert secret not in redact(f"GET {signed} failed: 403")


def test_public_uri_leaves_plain_uris_and_local_paths_alone() -> None:
    for uri in ("s3://bucket/videos/a.mp4", "/data/what?.mp4", "relative/a.mp4", "file:///data/a.mp4?sig=1",
                "https://cdn.example.com/a.mp4?st=5&sp=2",  # Azure-like names without a signature: not a SAS
                "s3://bucket/shard.tar#member.mp4"):
        assert public_uri(uri) == uri


def test_video_id_is_the_same_for_the_same_object_signed_again() -> None:
    first = "https://b.s3.amazonaws.com/a.mp4?X-Amz-Date=20260101T000000Z&X-Amz-Expires=600&X-Amz-Signature=aa"
    again = "https://b.s3.amazonaws.com/a.mp4?X-Amz-Date=20260102T000000Z&X-Amz-Expires=900&X-Amz-Signature=bb"
    assert make_video_id(first, "etag:1") == make_video_id(again, "etag:1") == make_video_id(public_uri(first), "etag:1")
    assert make_video_id(first, "etag:1") != make_video_id(first, "etag:2")
    other = "https://b.s3.amazonaws.com/b.mp4?X-Amz-Signature=aa"
    assert make_video_id(first, "etag:1") != make_video_id(other, "etag:1")


def test_redact_in_text_keeps_the_sentence() -> None:
    text = ("could not read https://h.example/a.mp4?X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F2026&X-Amz-Signature=ff). "
            "Retrying; header sig=c2lnbmF0dXJl and X-Goog-Signature=abcdef in the log")
    clean = redact(text)
    assert clean.startswith("could not read https://h.example/a.mp4). Retrying;")
    for secret in ("AKIAIOSFODNN7EXAMPLE", "c2lnbmF0dXJl", "abcdef"):
        assert secret not in clean


def test_redact_data_masks_secret_keys_and_urls_in_nested_data() -> None:
    data = {
        "source": {"input": "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI-K7MDENG@bucket/in",
                   "s3_endpoint_url": "http://minio:supersecret123@10.0.0.1:9000", "include": ["*.mp4"]},
        "job": {"aws_secret_access_key": "plain-secret-value", "api_token": "tok-123456789", "password": "",
                "webhook": "https://hooks.example.com/x?token=abcdef123456"},
        "model": {"max_new_tokens": 256, "model": "allenai/Molmo2-8B"},
    }
    clean = redact_data(data)
    text = repr(clean)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "supersecret123", "plain-secret-value", "tok-123456789",
                   "abcdef123456"):
        assert secret not in text, secret
    assert clean["source"]["s3_endpoint_url"] == f"http://{MASK}@10.0.0.1:9000"
    assert clean["job"]["aws_secret_access_key"] == MASK and clean["job"]["password"] == ""
    assert clean["model"] == {"max_new_tokens": 256, "model": "allenai/Molmo2-8B"}  # counters are not secrets
    assert clean["source"]["include"] == ["*.mp4"]
