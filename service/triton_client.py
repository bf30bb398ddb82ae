"""The gateway's asynchronous gRPC client for Triton (KServe v2), with timeouts and errors mapped to the API's."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from hybrid.contracts import ENSEMBLES
from service.errors import ApiError

# Media in and frames out can exceed gRPC's 4 MB default message size.
_CHANNEL_ARGS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class TritonClient:
    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = grpcclient.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    async def close(self) -> None:
        await self._client.close()

    async def infer(self, model: str, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run `model` on named arrays (each with its batch dimension) and return the `output` array."""
        infer_inputs = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        try:
            result = await self._client.infer(
                model,
                infer_inputs,
                outputs=[grpcclient.InferRequestedOutput(output)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise map_triton_error(exc) from None
        return result.as_numpy(output)

    async def inference_statistics(self) -> dict[str, dict]:
        """The server's cumulative statistics (KServe v2 statistics extension, as JSON), keyed by its address."""
        return {self.url: await self._client.get_inference_statistics(as_json=True, client_timeout=5)}

    async def readiness(self) -> dict[str, bool]:
        """Server readiness and each ensemble's; raises ApiError(503) when Triton cannot be reached."""
        try:
            status = {"server": await self._client.is_server_ready(client_timeout=5)}
            for name in ENSEMBLES:
                status[name] = await self._client.is_model_ready(name, client_timeout=5)
        except InferenceServerException as exc:
            raise map_triton_error(exc) from None
        return status


def map_triton_error(exc: InferenceServerException) -> ApiError:
    """INVALID_ARGUMENT → 422 (the input passed the gateway's checks but a model refused it), UNAVAILABLE → 503,
    DEADLINE_EXCEEDED → 504, RESOURCE_EXHAUSTED → 429, anything else → 502."""
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if "INVALID_ARGUMENT" in status:
        return ApiError(422, "rejected_by_model", message)
    if "UNAVAILABLE" in status or "failed to connect" in message.lower():
        return ApiError(503, "triton_unavailable", f"Triton is not reachable: {message}", {"Retry-After": "5"})
    if "DEADLINE_EXCEEDED" in status:
        return ApiError(504, "triton_timeout", "Triton did not answer within the request timeout")
    if "RESOURCE_EXHAUSTED" in status:
        return ApiError(429, "triton_overloaded", message, {"Retry-After": "1"})
    return ApiError(502, "inference_failed", message)
