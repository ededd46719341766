"""Datasets through the fireworks-ai SDK on a live ember: upload, counts, bad files, signed downloads."""

from __future__ import annotations

import json
import os
import time
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import fireworks
import httpx
import pytest

from tests.batch.helpers import BatchEnv, download, jsonl, upload

ROWS = [{"custom_id": f"r{i}", "body": {"prompt": f"Row number {i} says", "max_tokens": 4}} for i in range(5)]


def test_create_upload_get_list_delete(env: BatchEnv) -> None:
    c = env.sdk()
    created = c.datasets.create(dataset_id="ds-basic", dataset={"exampleCount": "99", "userUploaded": {},
                                                                 "displayName": "basic"})
    assert created.name == "accounts/acme/datasets/ds-basic" and created.state == "UPLOADING"
    r = c.datasets.upload("ds-basic", file=("input.jsonl", jsonl(ROWS), "application/jsonl"))
    assert r.bytes == len(jsonl(ROWS)) and r.filename == "input.jsonl" and r.object == "file"
    d = c.datasets.get("ds-basic")
    assert d.state == "READY"
    assert d.example_count == "5"  # counted from the file, not the 99 declared
    tok = env.server.app.state.ember.model.tokenizer
    assert d.estimated_token_count == str(sum(len(tok.encode(r["body"]["prompt"], add_special_tokens=False))
                                              for r in ROWS))
    assert "ds-basic" in [x.name.rsplit("/", 1)[-1] for x in c.datasets.list()]
    files = download(c, "ds-basic")
    assert files == {"input.jsonl": jsonl(ROWS)}
    on_disk = os.path.join(env.data_dir, "datasets", "acme", "ds-basic", "input.jsonl")
    assert open(on_disk, "rb").read() == jsonl(ROWS)
    c.datasets.delete("ds-basic")
    with pytest.raises(fireworks.NotFoundError):
        c.datasets.get("ds-basic")
    assert not os.path.exists(on_disk)


def test_crlf_bom_and_blank_lines_are_accepted(env: BatchEnv) -> None:
    c = env.sdk()
    text = "\ufeff" + "\r\n".join(json.dumps(r) for r in ROWS[:3]) + "\r\n\r\n\n   \n" + json.dumps(ROWS[3]) + "\n"
    upload(c, "ds-crlf", text.encode())
    assert c.datasets.get("ds-crlf").example_count == "4"


@pytest.mark.parametrize("content,line", [
    (b'{"custom_id": "a", "body": {}}\nnot json\n', 2),
    (b'{"custom_id": "a", "body": {}}\n[1, 2]\n', 2),
    (b'{"body": {"prompt": "x"}}\n', 1),
    (b'{"custom_id": 7, "body": {"prompt": "x"}}\n', 1),
    (b'{"custom_id": "a"}\n', 1),
    (b'{"custom_id": "a", "body": "x"}\n', 1),
    (b'{"custom_id": "a", "body": {}}\n\n{"custom_id": "a", "body": {}}\n', 3),
    (b'{"custom_id": "a", "body": {}}\n\xff\xfe\n', 2),
    (b'{"custom_id": "\\ud800", "body": {}}\n', 1),
    (b'{"custom_id": "a", "body": {}}\n' + b"[" * 100000 + b"\n", 2),
    (b"", None),
    (b"\n\n\r\n", None),
])
def test_structurally_bad_files_are_refused_naming_the_line(env: BatchEnv, content: bytes, line: int | None) -> None:
    c = env.sdk()
    ds = f"ds-bad-{abs(hash(content)) % 10**8}"
    c.datasets.create(dataset_id=ds, dataset={"exampleCount": "1"})
    with pytest.raises(fireworks.BadRequestError) as e:
        c.datasets.upload(ds, file=("in.jsonl", content, "application/jsonl"))
    msg = e.value.body["message"] if isinstance(e.value.body, dict) else str(e.value)
    assert e.value.status_code == 400
    assert (f"in.jsonl:{line}:" in msg) if line else "no rows" in msg
    d = c.datasets.get(ds)
    assert d.state == "UPLOADING"  # nothing replaced; a good upload still works afterwards
    assert os.listdir(os.path.join(env.data_dir, "datasets", "acme", ds)) == []
    c.datasets.upload(ds, file=("in.jsonl", jsonl(ROWS), "application/jsonl"))
    assert c.datasets.get(ds).state == "READY"


def test_a_ready_dataset_keeps_its_file(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "ds-immutable", jsonl(ROWS))
    with pytest.raises(fireworks.BadRequestError):
        c.datasets.upload("ds-immutable", file=("other.jsonl", jsonl(ROWS[:1]), "application/jsonl"))
    assert download(c, "ds-immutable") == {"input.jsonl": jsonl(ROWS)}


def test_upload_past_the_limit_is_413_and_leaves_nothing(env: BatchEnv) -> None:
    c = env.sdk()
    c.datasets.create(dataset_id="ds-huge", dataset={"exampleCount": "1"})
    row = json.dumps({"custom_id": "x", "body": {"prompt": "y" * 1000}}) + "\n"
    big = (row * (9 * 1024 * 1024 // len(row) + 1)).encode()  # > 8 MB, the limit of this server
    with pytest.raises(fireworks.APIStatusError) as e:
        c.datasets.upload("ds-huge", file=("big.jsonl", big, "application/jsonl"))
    assert e.value.status_code == 413
    assert c.datasets.get("ds-huge").state == "UPLOADING"
    folder = os.path.join(env.data_dir, "datasets", "acme", "ds-huge")
    assert not os.path.exists(folder) or os.listdir(folder) == []  # refused before the route ran: not made


def test_upload_without_content_length_is_cut_at_the_limit(env: BatchEnv) -> None:
    """A chunked body has no length to check up front: the stream itself is counted."""
    c = env.sdk()
    c.datasets.create(dataset_id="ds-chunked", dataset={"exampleCount": "1"})
    boundary = "b0undary"

    def body():  # noqa: ANN202 - a generator makes httpx send chunked
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.jsonl\"\r\n"
               "Content-Type: application/jsonl\r\n\r\n").encode()
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    with env.http() as h:
        r = h.post("/v1/accounts/acme/datasets/ds-chunked:upload", content=body(),
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert r.json()["code"] == 3


def test_a_5mb_line_is_uploaded_and_its_row_fails_alone(env: BatchEnv) -> None:
    from tests.batch.helpers import MODEL_ID, lines_of, wait_job

    c = env.sdk()
    rows = [ROWS[0], {"custom_id": "huge", "body": {"prompt": "word " * (1024 * 1024), "max_tokens": 2}}]
    upload(c, "ds-5mb", jsonl(rows))
    assert c.datasets.get("ds-5mb").example_count == "2"
    c.batch_inference_jobs.create(model=MODEL_ID, input_dataset_id="ds-5mb", output_dataset_id="ds-5mb-out",
                                  batch_inference_job_id="job-5mb")
    job = wait_job(c, "job-5mb")
    assert job.state == "JOB_STATE_COMPLETED"
    assert job.job_progress.failed_requests == 1 and job.job_progress.successfully_processed_requests == 1
    files = download(c, "ds-5mb-out")
    (err,) = lines_of(files["error-data"])
    assert err["custom_id"] == "huge" and err["error"]["code"] == "context_length_exceeded"


def test_hostile_ids_and_paths_are_4xx(env: BatchEnv) -> None:
    with env.http() as h:
        for bad in ("UPPER", "-lead", "a" * 64, "a_b", "..", "a%2Fb"):
            r = h.post("/v1/accounts/acme/datasets", json={"datasetId": bad, "dataset": {}})
            assert r.status_code == 400, (bad, r.text)
            if bad != "..":  # the client itself resolves ".." in a path
                assert h.get(f"/v1/accounts/acme/datasets/{bad}").status_code in (400, 404)
        r = h.post("/v1/accounts/acme/datasets", json={"datasetId": "ok", "dataset": {"bogus": 1}})
        assert r.status_code == 400
        assert h.post("/v1/accounts/acme/datasets/nope:upload", files={"file": ("a", b"x")}).status_code == 404
        h.post("/v1/accounts/acme/datasets", json={"datasetId": "ds-form", "dataset": {}})
        r = h.post("/v1/accounts/acme/datasets/ds-form:upload", content=b"{}",
                   headers={"content-type": "application/json"})
        assert r.status_code == 400
        r = h.post("/v1/accounts/acme/datasets/ds-form:upload", files={"other": ("a", b"x")})
        assert r.status_code == 400 and "file" in r.json()["message"]
        r = h.post("/v1/accounts/acme/datasets/ds-form:upload", content=b"--zz\r\ngarbage",
                   headers={"content-type": "multipart/form-data; boundary=zz"})
        assert r.status_code == 400
        # A path-like client file name is reduced to a base name inside the dataset's directory.
        r = h.post("/v1/accounts/acme/datasets/ds-form:upload",
                   files={"file": ("../../../etc/passwd", jsonl(ROWS[:1]))})
        assert r.status_code == 200 and r.json()["filename"] == "passwd"
    assert os.path.exists(os.path.join(env.data_dir, "datasets", "acme", "ds-form", "passwd"))
    # Another account's datasets are invisible, and another account's key cannot reach them.
    with env.http() as h:
        assert h.get("/v1/accounts/globex/datasets").status_code == 404
    with env.http(None) as h:
        assert h.get("/v1/accounts/acme/datasets").status_code == 401


def _with(url: str, **changes: str) -> str:
    u = urlparse(url)
    q = {k: v[0] for k, v in parse_qs(u.query).items()} | changes
    return urlunparse(u._replace(query=urlencode(q)))


def test_signed_urls_are_tamper_proof_and_expire(env: BatchEnv) -> None:
    c = env.sdk()
    upload(c, "ds-signed", jsonl(ROWS))
    upload(c, "ds-other", jsonl(ROWS[:2]))
    url = c.datasets.get_download_endpoint("ds-signed").filename_to_signed_urls["input.jsonl"]
    assert url.startswith(env.url + "/")
    with httpx.Client(timeout=30) as h:
        assert h.get(url).content == jsonl(ROWS)
        sig = parse_qs(urlparse(url).query)["signature"][0]
        flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
        assert h.get(_with(url, signature=flipped)).status_code == 403
        assert h.get(_with(url, signature="")).status_code == 403
        assert h.get(_with(url, expires=str(int(time.time()) + 10**6))).status_code == 403
        assert h.get(url.replace("/ds-signed/", "/ds-other/")).status_code == 403
        assert h.get(url.replace("/acme/", "/globex/")).status_code == 403
        assert h.get(url.replace("input.jsonl", "error-data")).status_code == 403
        kid = parse_qs(urlparse(url).query)["kid"][0]
        past = env.app_batch.signer.url(env.url, "acme", "ds-signed", "input.jsonl", kid, -5)
        r = h.get(past)
        assert r.status_code == 403 and "expired" in r.text
        fresh = env.app_batch.signer.url(env.url, "acme", "ds-signed", "input.jsonl", kid, 60)
        assert h.get(fresh).status_code == 200
        c.datasets.delete("ds-signed")
        assert h.get(url).status_code == 404  # a valid signature outlives nothing it signed
