"""Pass an inventory body through the official SDK's model, as the SDK's own client would."""

from __future__ import annotations

from typing import Any

from huaweicloudsdkcore.utils.http_utils import sanitize_for_serialization
from huaweicloudsdksms.v3 import PostSourceServerBody as SdkPostSourceServerBody
from huaweicloudsdksms.v3 import PutDiskInfoReq as SdkPutDiskInfoReq
from huaweicloudsdksms.v3 import SmsClient


def sdk_round_trip(wire: dict[str, Any], model_name: str = "PostSourceServerBody") -> Any:
    """Deserialize with the SDK client's `_deserialize` (type by type, recursively), serialize back.

    A field the SDK does not know is dropped and a value of the wrong type is converted, so the
    result equals the input only when the body fits the SDK model exactly.
    """
    model = SmsClient()._deserialize(wire, model_name)
    expected = {
        "PostSourceServerBody": SdkPostSourceServerBody,
        "PutDiskInfoReq": SdkPutDiskInfoReq,
    }
    assert isinstance(model, expected[model_name])
    return sanitize_for_serialization(model)
