"""The OpenAPI 3 document of the HTTP API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_DATATYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(code): _json(_ref("Error"), text)
    for code, text in [
        (400, "bad request: the message says what to fix"),
        (401, "missing or wrong bearer token"),
        (404, "unknown model or version"),
        (413, "body larger than the server accepts"),
        (503, "model or server not ready"),
        (504, "no answer within the request timeout"),
    ]
}

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Answer this request at most once: a re-send with the same key and "
    "payload gets the stored answer (also after a server restart, within the server's "
    "idempotency window); the same key with another payload is a 422. Or send it as the "
    "idempotency_key parameter.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _flags(*names: str, name: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {n: {"type": "boolean"} for n in names}
    if name:
        properties = {"name": {"type": "string"}, **properties}
    return {"type": "object", "required": list(properties), "properties": properties}


_SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "ServerLive": _flags("live"),
    "ServerReady": _flags("ready"),
    "ModelReady": _flags("ready", name=True),
    "Parameters": {
        "type": "object",
        "additionalProperties": {
            "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string", "enum": _DATATYPES},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Tensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": _DATATYPES},
            "parameters": _ref("Parameters"),
            "data": {
                "description": "row-major values, flat or nested",
                "type": "array",
                "items": {},
            },
        },
    },
    "RequestOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": _ref("Parameters")},
    },
    "InferenceRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _ref("Parameters"),
            "inputs": {"type": "array", "items": _ref("Tensor")},
            "outputs": {"type": "array", "items": _ref("RequestOutput")},
        },
    },
    "InferenceResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": _ref("Parameters"),
            "outputs": {"type": "array", "items": _ref("Tensor")},
        },
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        },
    },
}


def _model_paths(prefix: str) -> dict[str, Any]:
    params = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    if "{version}" in prefix:
        params.append(
            {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    return {
        prefix: {
            "get": {
                "summary": "Model metadata",
                "parameters": params,
                "responses": {"200": _json(_ref("ModelMetadata"), "metadata"), **_ERRORS},
            }
        },
        f"{prefix}/ready": {
            "get": {
                "summary": "Model readiness (200 ready, 503 not ready)",
                "parameters": params,
                "responses": {
                    **_ERRORS,
                    "200": _json(_ref("ModelReady"), "ready"),
                    "503": _json(_ref("ModelReady"), "not ready"),
                },
            }
        },
        f"{prefix}/infer": {
            "post": {
                "summary": "Inference (JSON, or the binary tensor data extension)",
                "parameters": [*params, _IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("InferenceRequest")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                    },
                },
                "responses": {
                    "200": _json(_ref("InferenceResponse"), "outputs"),
                    **_ERRORS,
                    "422": _json(_ref("Error"), "idempotency key reused with another payload"),
                },
            }
        },
    }


def _repository_paths() -> dict[str, Any]:
    """Triton's model repository extension (``serve --model-control``)."""
    model = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    body = {"content": {"application/json": {"schema": {"type": "object"}}}}
    index = {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("name", "version", "state", "reason")},
        },
    }
    control = {"200": {"description": "done (empty body)"}, **_ERRORS}
    return {
        "/v2/repository/index": {
            "post": {
                "summary": "Repository index: each model version's state (READY, "
                'UNAVAILABLE) and why; body {"ready": true} lists only ready ones',
                "requestBody": body,
                "responses": {"200": _json(index, "index")},
            }
        },
        "/v2/repository/models/{model}/load": {
            "post": {
                "summary": "Load or reload a model (--model-control explicit)",
                "parameters": model,
                "requestBody": body,
                "responses": control,
            }
        },
        "/v2/repository/models/{model}/unload": {
            "post": {
                "summary": "Unload a model (--model-control explicit); running requests finish",
                "parameters": model,
                "requestBody": body,
                "responses": control,
            }
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "edgecloud inference server (Open Inference Protocol v2)",
            "version": version,
        },
        "paths": {
            "/v2/health/live": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": _json(_ref("ServerLive"), "live")},
                }
            },
            "/v2/health/ready": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": _json(_ref("ServerReady"), "ready"),
                        "503": _json(_ref("ServerReady"), "not ready"),
                    },
                }
            },
            "/v2": {
                "get": {
                    "summary": "Server metadata",
                    "responses": {"200": _json(_ref("ServerMetadata"), "metadata")},
                }
            },
            **_model_paths("/v2/models/{model}"),
            **_model_paths("/v2/models/{model}/versions/{version}"),
            "/v2/models/{model}/config": {
                "get": {
                    "summary": "Model configuration (Triton JSON form)",
                    "parameters": [
                        {
                            "name": "model",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "configuration"}, **_ERRORS},
                }
            },
            **_repository_paths(),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text"}},
                }
            },
        },
        "components": {"schemas": _SCHEMAS},
    }
