"""Where imports are read and exports written: a local directory, or a prefix in an S3 bucket.

`ETL_IMPORT_DIR` and `ETL_EXPORT_DIR` take either a directory or `s3://bucket/prefix`, on any
S3-compatible store (AWS, MinIO, R2, Ceph: `ETL_S3_ENDPOINT_URL` names the endpoint when it is not
AWS). Objects are reached with obstore, the optional `s3` extra, chosen over aiobotocore by
measurement (README, "Object storage"): it streamed a 1M-row GET and a multipart PUT with about
half the CPU and memory. Its blocking calls release the GIL, so jobs make them in threads: the
import's read-ahead thread, the export's writer thread.

Credentials come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION), read by the worker's settings; when they are not set, obstore's own
chain applies (container or instance credentials, web identity). No message made here carries a
secret or the store's own error text: each failure is one line made from the S3 error code.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.errors import ConfigError, EtlError, PermanentError, TransientError

if TYPE_CHECKING:
    from obstore.store import S3Store

S3_SCHEME = "s3://"
# S3's own rules for bucket names (the rules for new buckets; older ones may differ only in case).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_S3_CODE = re.compile(r"<Code>([A-Za-z]{1,64})</Code>")
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidSecurity",
        "MissingSecurityHeader",
    }
)
MAX_KEY_BYTES = 1024
# Requests: a connect that takes longer than this is a store that is down. A whole request may
# last as long as the longest job (an hour): an import streams one GET for its whole file.
CONNECT_TIMEOUT = timedelta(seconds=10)
REQUEST_TIMEOUT = timedelta(hours=1)
# A store that does not answer is retried a few times over a few seconds, then the job fails as
# transient and arq retries it with its own backoff; obstore's default waits three minutes.
MAX_RETRIES = 3
RETRY_TIMEOUT = timedelta(seconds=20)


def is_s3_url(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(S3_SCHEME)


@dataclass(frozen=True, slots=True)
class S3Url:
    """A bucket and a key prefix, as `ETL_IMPORT_DIR` / `ETL_EXPORT_DIR` give them."""

    bucket: str
    prefix: str
    """Without leading or trailing slashes; "" for the whole bucket."""

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else S3_SCHEME + self.bucket


def parse_s3_url(value: str) -> S3Url:
    """`s3://bucket[/prefix]`; ValueError in one line otherwise (a URL has no secret to hide)."""
    text = value.strip()
    rest = text[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    example = "s3://bucket/prefix"
    if "@" in bucket or ":" in bucket:
        raise ValueError(
            f"an s3:// URL takes no user, password or port (expected {example}); credentials "
            "come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the endpoint from "
            "ETL_S3_ENDPOINT_URL"
        )
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket[:80]!r} is not a bucket name (3-63 lower-case letters, digits, dots and "
            f"hyphens; expected {example})"
        )
    if "?" in prefix or "#" in prefix:
        raise ValueError(f"an s3:// URL takes no query or fragment (expected {example})")
    prefix = prefix.strip("/")
    if prefix:
        problem = key_problem(prefix)
        if problem:
            raise ValueError(f"the prefix of {text[:200]!r} {problem}")
    return S3Url(bucket=bucket, prefix=prefix)


def key_problem(key: str) -> str | None:
    """Why `key` is not a plain object key (None if it is): S3 keys are taken literally, so `.`
    and `..` segments, empty segments and control characters are refused rather than guessed."""
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        return "holds a control character"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
    return None


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach the store: its endpoint and the credentials, when the settings give them."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The endpoint as messages name it."""
        return self.endpoint_url or "AWS S3"

    def scrub(self, text: str) -> str:
        """`text` with any credential replaced by `***` (messages are built without them; this
        is the second line of defence)."""
        for secret in (self.secret_access_key, self.session_token, self.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True, slots=True)
class ObjectPath:
    """A key in a bucket, with the few operations of `Path` the jobs use on their directories
    and files (`/`, `name`, `parent`, `with_name`, `str()` gives the `s3://` URL)."""

    bucket: str
    key: str
    options: S3Options = field(default_factory=S3Options, repr=False)

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self.bucket, f"{self.key}/{name}" if self.key else name, self.options)

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.bucket, self.key.rpartition("/")[0], self.options)

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    def relative_to(self, root: ObjectPath) -> str:
        if not root.key:
            return self.key
        return self.key.removeprefix(root.key + "/")

    def is_inside(self, root: ObjectPath) -> bool:
        if self.bucket != root.bucket or self.key == root.key:
            return False
        return not root.key or self.key.startswith(root.key + "/")

    def store(self) -> S3Store:
        """The bucket's client (one per bucket and options, kept for the process)."""
        return _store(self.bucket, self.options)


def located(value: Path | S3Url, options: S3Options) -> Path | ObjectPath:
    """A directory setting as jobs use it: a Path unchanged, an `S3Url` as an `ObjectPath`."""
    if isinstance(value, S3Url):
        return ObjectPath(value.bucket, value.prefix, options)
    return value


@functools.lru_cache(maxsize=16)
def _store(bucket: str, options: S3Options) -> S3Store:
    try:
        from obstore.store import S3Store
    except ImportError:
        raise ConfigError(
            "an s3:// import or export directory needs the s3 extra: pip install 'etl-worker[s3]'"
        ) from None
    config: dict[str, str] = {}
    if options.endpoint_url:
        config["endpoint"] = options.endpoint_url
    if options.region:
        config["region"] = options.region
    if options.access_key_id and options.secret_access_key:
        config["access_key_id"] = options.access_key_id
        config["secret_access_key"] = options.secret_access_key
        if options.session_token:
            config["session_token"] = options.session_token
    client = {
        "allow_http": bool(options.endpoint_url and options.endpoint_url.startswith("http://")),
        "connect_timeout": CONNECT_TIMEOUT,
        "timeout": REQUEST_TIMEOUT,
    }
    retry = {"max_retries": MAX_RETRIES, "retry_timeout": RETRY_TIMEOUT}
    try:
        return S3Store(bucket, config=config, client_options=client, retry_config=retry)  # type: ignore[arg-type]
    except Exception as exc:  # a malformed endpoint or region: obstore's text names no secret
        raise ConfigError(
            f"cannot reach bucket {bucket!r} at {options.where}: {options.scrub(_first_line(exc))}"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def s3_code(exc: BaseException) -> str | None:
    """The S3 error code in a store's error (`NoSuchKey`, `SignatureDoesNotMatch`...), if any."""
    found = _S3_CODE.search(str(exc))
    return found.group(1) if found else None


def storage_failure(
    exc: BaseException,
    *,
    path: ObjectPath,
    name: str,
    missing: type[PermanentError],
    setting: str,
) -> EtlError:
    """One line for an error of the object store about `path` (`name` in messages).

    A missing object is `missing` (the caller's kind: InputFileError for imports); an unknown
    bucket, refused credentials or a refused permission are configuration errors; a store that
    cannot be reached is transient (the job is retried); a changed object is `missing`'s kind too.
    The store's own text is never shown: it quotes the request and the server's answer.
    """
    from obstore import exceptions as obs

    code = s3_code(exc)
    options = path.options
    bucket = f"{S3_SCHEME}{path.bucket}"
    if code == "NoSuchBucket":
        return ConfigError(
            f"bucket {path.bucket!r} does not exist at {options.where} ({setting}); create it "
            "or correct the setting"
        )
    if code in _CREDENTIAL_CODES or isinstance(exc, obs.UnauthenticatedError):
        return ConfigError(
            f"{options.where} refused the credentials for {bucket} ({code or 'unauthenticated'}); "
            "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
        )
    if isinstance(exc, obs.PermissionDeniedError):
        return ConfigError(
            f"{options.where} denied access to {path} ({code or 'permission denied'}); the "
            "credentials lack permission for it"
        )
    if isinstance(exc, obs.PreconditionError | obs.NotModifiedError):
        return missing(
            f"{name}: the object was replaced while it was being read (its ETag changed); "
            "nothing was loaded, run the job again"
        )
    if isinstance(exc, obs.NotFoundError | FileNotFoundError):  # obstore raises the builtin
        return missing(f"{name}: no such object {path}")
    if isinstance(exc, obs.GenericError | obs.JoinError) or isinstance(exc, OSError):
        # obstore says "Generic S3 error" for what its retries could not get past: a refused or
        # reset connection, a timeout, a 5xx. Worth another try later.
        return TransientError(
            f"object store {options.where} failed on {path}"
            f"{f' ({code})' if code else ''}: {_kind(exc)}; retrying"
        )
    return PermanentError(
        f"object store {options.where} failed on {path} ({code or type(exc).__name__})"
    )


def _kind(exc: BaseException) -> str:
    """A short, secret-free name for a transport failure, from obstore's debug text."""
    text = str(exc)
    for marker, kind in (
        ("kind: Connect", "cannot connect"),
        ("TimedOut", "timed out"),
        ("kind: Body", "the connection broke mid-transfer"),
        ("kind: Decode", "the connection broke mid-transfer"),
        ("Server returned non-2xx status code: 5", "server error"),
        ("error sending request", "cannot connect"),
    ):
        if marker in text:
            return kind
    return type(exc).__name__
