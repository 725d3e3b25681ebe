"""The SMS client the settings describe: credentials for the configured auth mode, timeouts,
TLS and proxy. Used by the running agent and by `smsagent check`.
"""

from __future__ import annotations

from smsagent.api.auth import AkSkCredentials, Credentials, IamTokenCredentials, TokenCredentials
from smsagent.api.client import SmsClient
from smsagent.config import AuthMode, Settings


def make_credentials(settings: Settings) -> Credentials:
    """The credentials object for the configured auth mode."""
    mode = settings.auth_mode
    if mode is AuthMode.aksk:
        assert settings.ak is not None and settings.sk is not None
        return AkSkCredentials(settings.ak, settings.sk, settings.project_id)
    if mode is AuthMode.token:
        assert settings.token is not None
        return TokenCredentials(settings.token, settings.project_id)
    assert settings.iam_user and settings.iam_password and settings.iam_domain
    return IamTokenCredentials(
        iam_endpoint=settings.iam_endpoint,
        user=settings.iam_user,
        password=settings.iam_password,
        domain=settings.iam_domain,
        project_id=settings.project_id,
        refresh_margin_s=settings.iam_token_refresh_margin,
    )


def make_client(settings: Settings) -> SmsClient:
    """The SMS client the settings describe."""
    return SmsClient(
        settings.endpoint,
        make_credentials(settings),
        connect_timeout_s=settings.connect_timeout,
        read_timeout_s=settings.read_timeout,
        verify_tls=settings.verify_tls,
        ca_bundle=settings.ca_bundle,
        proxy=settings.proxy,
    )
