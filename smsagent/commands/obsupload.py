"""Where a log bundle goes and how: the OBS endpoint and region, and one signed PUT.

OBS speaks the S3 protocol with AWS Signature Version 4, so the upload goes through `minio`, an
S3 client with no heavy dependencies of its own (`urllib3`; its crypto packages are binary
wheels), imported only when an upload runs: an agent waiting for work never loads it.

The endpoint is `SMSAGENT_OBS_ENDPOINT` when set, else `https://obs.<region>.<domain>`: the
region is the task's (`region_id`), else the one in `SMSAGENT_ENDPOINT`
(`sms.<region>.<domain>`); the domain is `SMSAGENT_ENDPOINT`'s, else `myhuaweicloud.com`.
OBS's own hosts are addressed virtual-host style (`bucket.obs.<region>...`), any other host
path style (`host/bucket/...`), which S3-compatible stores on a private address need.
"""

from __future__ import annotations

import io
import ipaddress
import re
import ssl
from dataclasses import dataclass
from typing import Any, Final, Optional
from urllib.parse import urlsplit

from smsagent.config import Settings

DEFAULT_DOMAIN: Final = "myhuaweicloud.com"
OBS_SERVICE: Final = "obs"
SMS_SERVICE: Final = "sms"
CONTENT_TYPE: Final = "application/gzip"
# Transient failures (a reset, a 5xx) are tried again this often within one upload.
RETRIES: Final = 2
# Bucket names as OBS accepts them: 3-63 characters of lower-case letters, digits, `-` and `.`,
# starting and ending with a letter or digit.
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION: Final = re.compile(r"[a-z]{2}(-[a-z0-9]+)+")


class UploadError(Exception):
    """The bundle could not be uploaded; `str()` is one sentence saying why, with no secret."""


@dataclass(frozen=True)
class ObsTarget:
    """Where an upload goes.

    Attributes:
        endpoint: the OBS endpoint URL (`https://obs.ap-southeast-3.myhuaweicloud.com`).
        region: the region signatures are scoped to.
        bucket: the bucket.
    """

    endpoint: str
    region: str
    bucket: str

    @property
    def virtual_host_style(self) -> bool:
        """Whether the bucket goes into the host name (OBS's own hosts) or the path."""
        host = urlsplit(self.endpoint).hostname or ""
        return region_of_host(host, OBS_SERVICE) is not None


@dataclass(frozen=True)
class UploadReceipt:
    """What OBS answered to the upload."""

    object_name: str
    size: int
    etag: Optional[str]


def bucket_problem(bucket: Optional[str]) -> Optional[str]:
    """Why `bucket` is no OBS bucket name, or None when it is one."""
    if not bucket:
        return "UPLOAD_LOG came without command_param.bucket"
    if _BUCKET.fullmatch(bucket) is None or ".." in bucket or ".-" in bucket or "-." in bucket:
        return (
            f"command_param.bucket {bucket[:70]!r} is not an OBS bucket name (3 to 63 lower-case "
            "letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )
    if _is_ip_address(bucket):
        return f"command_param.bucket {bucket!r} is not an OBS bucket name (it is an IP address)"
    return None


def region_of_host(host: str, service: str) -> Optional[str]:
    """The region in a host named `<service>.<region>.<domain>`, or None."""
    parts = host.lower().split(".")
    if len(parts) >= 4 and parts[0] == service and _REGION.fullmatch(parts[1]):
        return parts[1]
    return None


def _domain_of_sms(settings: Settings) -> str:
    host = (urlsplit(settings.endpoint).hostname or "").lower()
    if region_of_host(host, SMS_SERVICE) is not None:
        return host.split(".", 2)[2]
    return DEFAULT_DOMAIN


def obs_target(settings: Settings, bucket: str, task_region: Optional[str]) -> ObsTarget:
    """The endpoint and region for `bucket`.

    Raises:
        UploadError: no region can be told (none in the endpoint, the task or SMS's endpoint).
    """
    sms_host = urlsplit(settings.endpoint).hostname or ""
    region_of_task = task_region if task_region and _REGION.fullmatch(task_region) else None
    fallback = region_of_task or region_of_host(sms_host, SMS_SERVICE)
    if settings.obs_endpoint is not None:
        obs_host = urlsplit(settings.obs_endpoint).hostname or ""
        region = region_of_host(obs_host, OBS_SERVICE) or fallback
        if region is None:
            raise UploadError(
                f"cannot tell the region of SMSAGENT_OBS_ENDPOINT {settings.obs_endpoint}: the "
                "task names none and SMSAGENT_ENDPOINT has none in its host name"
            )
        return ObsTarget(settings.obs_endpoint, region, bucket)
    if fallback is None:
        raise UploadError(
            "cannot tell the OBS endpoint: the task names no region and SMSAGENT_ENDPOINT has "
            "none in its host name; set SMSAGENT_OBS_ENDPOINT=https://obs.<region>."
            f"{DEFAULT_DOMAIN}"
        )
    endpoint = f"https://{OBS_SERVICE}.{fallback}.{_domain_of_sms(settings)}"
    return ObsTarget(endpoint, fallback, bucket)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _http_client(settings: Settings) -> Any:
    """A urllib3 pool with the agent's timeouts, TLS trust and proxy."""
    import urllib3

    timeout = urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout)
    retries = urllib3.Retry(
        total=RETRIES,
        backoff_factor=0.5,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
    )
    context = ssl.create_default_context()
    if settings.ca_bundle is not None:
        context.load_verify_locations(cafile=str(settings.ca_bundle))
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    options: dict[str, Any] = {"timeout": timeout, "retries": retries, "ssl_context": context}
    if settings.proxy is not None:
        return urllib3.ProxyManager(settings.proxy, **options)
    return urllib3.PoolManager(**options)


def upload(settings: Settings, target: ObsTarget, object_name: str, data: bytes) -> UploadReceipt:
    """PUT `data` as `object_name` into the target bucket, signed with the agent's AK/SK.

    Blocking; the caller runs it off the event loop.

    Raises:
        UploadError: OBS refused (its error code and message), or could not be reached.
    """
    from minio import Minio
    from minio.error import MinioException, S3Error
    from minio.helpers import MIN_PART_SIZE
    from urllib3.exceptions import HTTPError

    if settings.ak is None or settings.sk is None:
        raise UploadError("the log upload signs with the AK/SK; SMSAGENT_AK/SMSAGENT_SK are unset")
    parts = urlsplit(target.endpoint)
    client = Minio(
        parts.netloc,
        access_key=settings.ak,
        secret_key=settings.sk.get_secret_value(),
        secure=parts.scheme == "https",
        region=target.region,
        http_client=_http_client(settings),
    )
    if target.virtual_host_style:
        client.enable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
    try:
        # One part however large: a single PUT, which every OBS and S3 store takes.
        result = client.put_object(
            target.bucket,
            object_name,
            io.BytesIO(data),
            len(data),
            content_type=CONTENT_TYPE,
            part_size=max(MIN_PART_SIZE, len(data)),
        )
    except S3Error as exc:
        status = exc.response.status if exc.response is not None else "?"
        raise UploadError(
            f"OBS refused the upload to bucket {target.bucket} at {target.endpoint}: "
            f"{exc.code} (HTTP {status}): {exc.message}"
        ) from None
    except (MinioException, HTTPError, OSError, ValueError) as exc:
        raise UploadError(
            f"the upload to bucket {target.bucket} at {target.endpoint} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return UploadReceipt(object_name, len(data), result.etag)
