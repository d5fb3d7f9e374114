"""`s3://` import and export dirs: parsing the setting, confining keys, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.errors import ConfigError, InputFileError, PathNotAllowed, TransientError
from jobs.paths import object_inside
from jobs.storage import ObjectPath, S3Options, S3Url, located, parse_s3_url, storage_failure
from worker.settings import Settings

SECRET = "s3cr3t-Key-Never-Shown"
ROOT = ObjectPath("bucket", "in/box", S3Options(secret_access_key=SECRET))


def load(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://my-bucket", "my-bucket", ""),
        ("s3://my-bucket/", "my-bucket", ""),
        ("s3://my.bucket/in/box/", "my.bucket", "in/box"),
        (" s3://b12/x ", "b12", "x"),
    ],
)
def test_s3_urls_parse(url: str, bucket: str, prefix: str) -> None:
    assert parse_s3_url(url) == S3Url(bucket, prefix)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://Upper/x", "is not a bucket name"),
        ("s3://a/x", "is not a bucket name"),
        ("s3://user:pw@bucket/x", "takes no user, password or port"),
        ("s3://bucket:9000/x", "takes no user, password or port"),
        ("s3://bucket/a/../b", "'..' segment"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/x?versionId=1", "no query"),
    ],
)
def test_bad_s3_urls_are_refused_in_one_line(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_s3_url(url)
    assert "\n" not in str(caught.value) and "pw" not in str(caught.value)


def test_settings_take_a_directory_or_an_s3_url() -> None:
    settings = load(
        ETL_IMPORT_DIR="s3://inbound/daily",
        ETL_EXPORT_DIR="exports",
        ETL_S3_ENDPOINT_URL="http://127.0.0.1:9000/",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_REGION="eu-west-1",
    )
    assert settings.import_dir == S3Url("inbound", "daily")
    assert settings.export_dir == Path("exports").absolute()
    options = settings.s3_options()
    assert options.endpoint_url == "http://127.0.0.1:9000"
    assert (options.region, options.access_key_id, options.secret_access_key) == (
        "eu-west-1",
        "AKIAEXAMPLE",
        SECRET,
    )
    assert located(settings.import_dir, options) == ObjectPath("inbound", "daily", options)
    for shown in (repr(settings), str(settings), repr(options), repr(ROOT)):
        assert SECRET not in shown


def test_a_bad_s3_setting_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValidationError) as caught:
        load(ETL_EXPORT_DIR="s3://Bad_Bucket/x")
    assert "ETL_EXPORT_DIR" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        load(ETL_S3_ENDPOINT_URL=f"http://key:{SECRET}@minio:9000")
    assert SECRET not in str(caught.value)
    assert "ETL_S3_ENDPOINT_URL must be http(s)://host[:port]" in str(caught.value)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("customers.csv", "in/box/customers.csv"),
        ("2024/06/customers.csv.gz", "in/box/2024/06/customers.csv.gz"),
        ("s3://bucket/in/box/customers.csv", "in/box/customers.csv"),
    ],
)
def test_keys_inside_the_prefix(path: str, key: str) -> None:
    target = object_inside(ROOT, path)
    assert (target.bucket, target.key) == ("bucket", key)
    assert target.relative_to(ROOT) == key.removeprefix("in/box/")


@pytest.mark.parametrize(
    "path",
    [
        "../customers.csv",
        "a/../customers.csv",
        "./customers.csv",
        "a//b.csv",
        "/in/box/customers.csv",
        "s3://bucket/in/boxes/customers.csv",
        "s3://bucket/in/box",
        "s3://other/in/box/customers.csv",
        "s3://bucket/in/box/../x.csv",
        "file:///etc/passwd",
        "customers.csv\n",
    ],
)
def test_keys_outside_the_prefix_are_refused(path: str) -> None:
    with pytest.raises(PathNotAllowed, match="is outside 's3://bucket/in/box'") as caught:
        object_inside(ROOT, path)
    assert "\n" not in caught.value.message


def test_an_empty_or_nul_path_is_not_a_file_name() -> None:
    for path in ("", "a\x00b"):
        with pytest.raises(PathNotAllowed, match="is not a usable file name"):
            object_inside(ROOT, path)


def test_object_paths_behave_like_the_paths_jobs_use() -> None:
    file = ROOT / "customers" / "x.csv.gz"
    assert str(file) == "s3://bucket/in/box/customers/x.csv.gz"
    assert file.name == "x.csv.gz"
    assert file.with_name("x.csv.gz.manifest.json").key == "in/box/customers/x.csv.gz.manifest.json"
    assert file.parent == ROOT / "customers"
    assert str(ObjectPath("bucket", "") / "a.csv") == "s3://bucket/a.csv"


def _failure(exc: BaseException) -> Exception:
    return storage_failure(
        exc, path=ROOT / "a.csv", name="a.csv", missing=InputFileError, setting="ETL_IMPORT_DIR"
    )


def test_store_errors_become_one_line_of_the_right_kind() -> None:
    obs = pytest.importorskip("obstore.exceptions")
    answer = "Server returned non-2xx status code: 403 Forbidden: <Error><Code>{}</Code>"
    cases = [
        (FileNotFoundError(answer.format("NoSuchKey")), InputFileError, "no such object"),
        (FileNotFoundError(answer.format("NoSuchBucket")), ConfigError, "does not exist"),
        (obs.PermissionDeniedError(answer.format("InvalidAccessKeyId")), ConfigError, "refused"),
        (obs.PermissionDeniedError(answer.format("AccessDenied")), ConfigError, "denied access"),
        (obs.PreconditionError("412"), InputFileError, "replaced while it was being read"),
        (obs.GenericError(f"HttpError {{ kind: Connect }} {SECRET}"), TransientError, "cannot"),
    ]
    for exc, kind, text in cases:
        failure = _failure(exc)
        assert isinstance(failure, kind), (exc, failure)
        assert text in str(failure)
        assert "\n" not in str(failure) and SECRET not in str(failure)
