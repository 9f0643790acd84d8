"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API): reading an infer request and
writing its response, in JSON and in the binary tensor data extension. No HTTP and no model here:
the routes (:mod:`service.api.oip`) read the body and the headers, this module turns them into
tensors and back, and the request path is the one of ``/classify`` (:mod:`service.pipeline`).

**The binary tensor data extension** (Triton's ``binary_tensor_data``, what ``tritonclient.http``
sends and asks for by default): the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by each binary input's bytes, in the order of ``inputs``, each input saying its
length in ``parameters.binary_data_size``. A ``BYTES`` tensor's binary form is, for each element,
its length as a 4-byte little-endian unsigned integer and then its bytes; an ``FP32`` tensor's is
its values, little-endian, row-major. Responses are built the same way, an output being binary when
it asks for ``binary_data`` or, when it says nothing, when the request's ``binary_data_output`` is
true.

**Images as BYTES.** One encoded image (PNG, JPEG, … as the file is) per element. In the binary
form an element is the file's bytes; in a JSON tensor, where an element must be a UTF-8 string
(``tritonclient`` refuses anything else), it is the file base64-encoded (RFC 4648, padding
optional), as KServe and OpenVINO Model Server read it. Every violation of the protocol is an
:class:`~service.errors.InferRequestError` (400) naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InferRequestError, PayloadTooLargeError

#: The protocol's datatypes (what a request may name; the model takes ``BYTES`` and ``FP32``).
DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
        "BF16",
    }
)
#: Content encodings of a request body that are decompressed (``tritonclient``'s
#: ``request_compression_algorithm``); ``identity`` is none.
CONTENT_ENCODINGS = ("gzip", "deflate", "identity")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InputTensor:
    """One input of a request: its JSON ``data`` (any nesting) or its binary bytes (``raw``)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    raw: bytes | None = None

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class OutputRequest:
    """An output the client asks for: in binary or JSON (None: the request's default), and as the
    top ``classification`` classes (0: the tensor itself)."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    #: None: the client named none (every output, in the request's default encoding).
    outputs: list[OutputRequest] | None
    parameters: dict[str, Any]

    @property
    def binary_output(self) -> bool:
        """The default encoding of outputs: ``binary_data_output``."""
        return self.parameters.get("binary_data_output") is True

    def timeout_us(self) -> int | None:
        """The ``timeout`` parameter (µs, as ``tritonclient`` sends it), or None."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InferRequestError(f"parameter 'timeout' must be a positive integer (µs), got {value!r}")
        return value


@dataclass(frozen=True)
class OutputTensor:
    """An output of the response: ``FP32`` values (a float32 array) or ``BYTES`` strings."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """``body`` as sent with ``Content-Encoding: encoding`` (gzip, deflate or none), refused past
    ``limit`` bytes once decompressed (so a small compressed body cannot expand without bound)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in CONTENT_ENCODINGS:
        raise InferRequestError(
            f"Content-Encoding {encoding!r} is not supported; send {', '.join(CONTENT_ENCODINGS)}"
        )
    # gzip: a gzip header (wbits 16+); deflate: the zlib format, as HTTP's "deflate" means.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InferRequestError(f"the body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit:
        raise PayloadTooLargeError(f"the decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise InferRequestError(f"the {encoding} body is truncated")
    return data


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """The infer request in ``body``; ``header_length`` is ``Inference-Header-Content-Length``
    (None: the whole body is JSON)."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.strip().isdigit():
            raise InferRequestError(
                f"Inference-Header-Content-Length must be a byte count, got {header_length!r}"
            )
        length = int(header_length)
        if length > len(body):
            raise InferRequestError(
                f"Inference-Header-Content-Length {length} exceeds the body's {len(body)} bytes"
            )
        header, binary = body[:length], body[length:]
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InferRequestError(f"the inference header is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InferRequestError("the inference request must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferRequestError("'id' must be a string")
    parameters = _parameters(document, "the request")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InferRequestError("'inputs' must be a non-empty list of tensors")
    inputs: list[InputTensor] = []
    offset = 0
    for raw in raw_inputs:
        tensor = _input(raw)
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InferRequestError(f"input {tensor.name!r}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise InferRequestError(
                    f"input {tensor.name!r}: binary_data_size {size} runs past the body's binary data "
                    f"({len(binary) - offset} bytes left)"
                )
            tensor = InputTensor(
                tensor.name,
                tensor.datatype,
                tensor.shape,
                tensor.parameters,
                raw=binary[offset : offset + size],
            )
            offset += size
        elif tensor.data is None:
            raise InferRequestError(f"input {tensor.name!r} has neither 'data' nor binary_data_size")
        inputs.append(tensor)
    if offset != len(binary):
        raise InferRequestError(
            f"{len(binary) - offset} bytes of binary data follow the inputs that no input claims"
        )
    outputs = document.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InferRequestError("'outputs' must be a list")
        outputs = [_output(o) for o in outputs]
    return InferRequest(request_id, inputs, outputs, parameters)


def _parameters(document: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InferRequestError(f"'parameters' of {where} must be an object")
    if "shared_memory_region" in parameters:
        raise InferRequestError(f"{where}: shared memory is not supported; send the data in the request")
    return parameters


def _input(raw: Any) -> InputTensor:
    if not isinstance(raw, dict):
        raise InferRequestError("each input must be an object with name, datatype, shape")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InferRequestError("an input has no 'name'")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise InferRequestError(f"input {name!r}: unknown datatype {datatype!r}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InferRequestError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return InputTensor(
        name, datatype, tuple(shape), _parameters(raw, f"input {name!r}"), data=raw.get("data")
    )


def _output(raw: Any) -> OutputRequest:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InferRequestError("each requested output must be an object with a 'name'")
    parameters = _parameters(raw, f"output {raw['name']!r}")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise InferRequestError(f"output {raw['name']!r}: binary_data must be true or false")
    classification = parameters.get("classification", 0)
    if isinstance(classification, bool) or not isinstance(classification, int) or classification < 0:
        raise InferRequestError(f"output {raw['name']!r}: classification must be a count of classes")
    return OutputRequest(raw["name"], binary, classification)


def bytes_elements(tensor: InputTensor) -> list[bytes]:
    """The elements of a ``BYTES`` input: length-prefixed in binary, base64 strings in JSON."""
    if tensor.raw is not None:
        elements, at, raw = [], 0, tensor.raw
        while at < len(raw):
            if at + 4 > len(raw):
                raise InferRequestError(f"input {tensor.name!r}: a BYTES element's length is cut short")
            (length,) = _LENGTH.unpack_from(raw, at)
            at += 4
            if at + length > len(raw):
                raise InferRequestError(
                    f"input {tensor.name!r}: a BYTES element of {length} bytes runs past the input's data"
                )
            elements.append(raw[at : at + length])
            at += length
    else:
        flat = _flatten(tensor.data)
        if not all(isinstance(e, str) for e in flat):
            raise InferRequestError(
                f"input {tensor.name!r}: in JSON, each BYTES element must be a base64 string of the image"
            )
        elements = [_base64(e, tensor.name) for e in flat]
    if len(elements) != tensor.elements:
        raise InferRequestError(
            f"input {tensor.name!r}: shape {list(tensor.shape)} holds {tensor.elements} elements, "
            f"the data has {len(elements)}"
        )
    return elements


def _base64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InferRequestError(f"input {name!r}: an element is not base64 ({exc})") from exc


def fp32_array(tensor: InputTensor) -> np.ndarray:
    """An ``FP32`` input's values as a float32 array of its shape (finite values only)."""
    if tensor.raw is not None:
        if len(tensor.raw) != 4 * tensor.elements:
            raise InferRequestError(
                f"input {tensor.name!r}: shape {list(tensor.shape)} needs {4 * tensor.elements} bytes of "
                f"FP32, the data has {len(tensor.raw)}"
            )
        array = np.frombuffer(tensor.raw, dtype="<f4").astype(np.float32)
    else:
        flat = _flatten(tensor.data)
        if len(flat) != tensor.elements:
            raise InferRequestError(
                f"input {tensor.name!r}: shape {list(tensor.shape)} holds {tensor.elements} elements, "
                f"the data has {len(flat)}"
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
            raise InferRequestError(f"input {tensor.name!r}: FP32 data must be numbers")
        array = np.asarray(flat, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InferRequestError(f"input {tensor.name!r}: FP32 data must be finite")
    return array.reshape(tensor.shape)


def _flatten(data: Any) -> list[Any]:
    """JSON tensor data, nested row-major or flat, as one flat list."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
    parameters: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (the response's
    ``Inference-Header-Content-Length``)."""
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    tensors, blobs = [], []
    for output in outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        tensor_parameters = dict(output.parameters)
        if output.binary:
            blob = _binary(output)
            tensor_parameters["binary_data_size"] = len(blob)
            blobs.append(blob)
        elif output.datatype == "BYTES":
            assert isinstance(output.values, list)
            tensor["data"] = [v.decode("utf-8") for v in output.values]
        else:
            assert isinstance(output.values, np.ndarray)
            tensor["data"] = output.values.reshape(-1).tolist()
        if tensor_parameters:
            tensor["parameters"] = tensor_parameters
        tensors.append(tensor)
    document["outputs"] = tensors
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _binary(output: OutputTensor) -> bytes:
    if output.datatype == "BYTES":
        assert isinstance(output.values, list)
        return b"".join(_LENGTH.pack(len(v)) + v for v in output.values)
    assert isinstance(output.values, np.ndarray)
    return np.ascontiguousarray(output.values, dtype="<f4").tobytes()


def classification_strings(scores: np.ndarray, labels: Sequence[str], k: int) -> list[bytes]:
    """Triton's classification extension: for each row, its top ``k`` classes as
    ``"score:index:label"`` strings (best first), row-major."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [f"{scores[r, i]:f}:{i}:{labels[i]}".encode() for r in range(scores.shape[0]) for i in top[r]]
