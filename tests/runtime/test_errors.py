"""Transport-neutral errors (issue 18): domain errors carry an ErrorCode, never a gRPC
status; runtime.grpc_errors is the one mapping to and from gRPC, total over ErrorCode;
and the domain modules that define errors do not import grpc."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest

from openai_compat.protocol import error_detail
from proxy.limits import QUEUE_FULL, ShedError, UnauthenticatedError
from proxy.worker_errors import RelayedError
from registry.blobs import BlobStoreError
from registry.blobs import IntegrityError as BlobIntegrityError
from registry.hub import HubPermissionError
from runtime import errors
from runtime.errors import ErrorCode, HeliosError, error_from_code
from runtime.grpc_errors import (
    RETRY_AFTER_METADATA,
    STATUS_BY_CODE,
    error_code,
    error_from_status,
    grpc_status,
    retry_after_metadata,
)
from storaged.download import IntegrityError as DownloadIntegrityError

REPO = Path(__file__).resolve().parents[2]

# Where HeliosError subclasses live: domain code, which must not know gRPC.
DOMAIN_ERROR_MODULES = (
    "runtime/errors.py",
    "proxy/limits.py",
    "proxy/worker_errors.py",
    "registry/blobs.py",
    "registry/hub.py",
    "storaged/download.py",
    "worker/engine/base.py",
    "worker_api/disagg.py",
)
PRODUCTION_PACKAGES = (
    "runtime",
    "openai_compat",
    "worker_api",
    "worker",
    "proxy",
    "estimator",
    "registry",
    "storaged",
    "zerocopy",
    "models",
    "cli",
)


def test_every_error_code_maps_to_the_grpc_status_of_its_name() -> None:
    assert set(STATUS_BY_CODE) == set(ErrorCode)
    for code in ErrorCode:
        status = grpc_status(code)
        # Same name, so logs and OpenAI error objects read as before.
        assert status.name == code.name == code.value
        assert error_code(status) is code


def test_every_failed_grpc_status_has_a_code_and_ok_is_none() -> None:
    failures = set(grpc.StatusCode) - {grpc.StatusCode.OK}
    assert set(STATUS_BY_CODE.values()) == failures  # one to one
    assert error_code(grpc.StatusCode.OK) is ErrorCode.UNKNOWN


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.HeliosError("x"), grpc.StatusCode.INTERNAL),
        (errors.InvalidArgumentError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExistsError("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.PermissionDeniedError("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.FailedPreconditionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhaustedError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.UnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceededError("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.UnimplementedError("x"), grpc.StatusCode.UNIMPLEMENTED),
        (UnauthenticatedError("x"), grpc.StatusCode.UNAUTHENTICATED),
        (ShedError("x", reason=QUEUE_FULL, retry_after_s=1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (RelayedError(ErrorCode.ABORTED, "x"), grpc.StatusCode.ABORTED),
        (BlobIntegrityError("x"), grpc.StatusCode.DATA_LOSS),
        (BlobStoreError("x"), grpc.StatusCode.UNAVAILABLE),
        (HubPermissionError("x"), grpc.StatusCode.PERMISSION_DENIED),
        (DownloadIntegrityError("x"), grpc.StatusCode.DATA_LOSS),
    ],
    ids=lambda value: type(value).__name__,
)
def test_each_error_keeps_the_status_it_had_on_the_wire(
    error: HeliosError, status: grpc.StatusCode
) -> None:
    assert isinstance(error.code, ErrorCode)
    assert grpc_status(error.code) is status


def test_the_code_given_to_one_error_leaves_its_class_alone() -> None:
    relayed = errors.UnavailableError("x", code=ErrorCode.OUT_OF_RANGE)
    assert relayed.code is ErrorCode.OUT_OF_RANGE
    assert errors.UnavailableError("y").code is ErrorCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhaustedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
        # No client-side meaning: the dependency failed.
        (grpc.StatusCode.INTERNAL, errors.UnavailableError),
        (grpc.StatusCode.UNKNOWN, errors.UnavailableError),
        (grpc.StatusCode.DATA_LOSS, errors.UnavailableError),
        (grpc.StatusCode.UNAUTHENTICATED, errors.UnavailableError),
    ],
)
def test_a_downstream_status_becomes_its_domain_error(
    status: grpc.StatusCode, cls: type[HeliosError]
) -> None:
    error = error_from_status(status, "the detail")
    assert type(error) is cls
    assert error.message == "the detail"
    assert type(error_from_code(error_code(status), "d")) is cls


@pytest.mark.parametrize(
    ("seconds", "header"), [(None, None), (0.001, "1"), (1.0, "1"), (2.5, "3"), (30, "30")]
)
def test_retry_after_is_whole_seconds_at_least_one(seconds: float | None, header: str) -> None:
    error = errors.ResourceExhaustedError("full", retry_after_s=seconds)
    assert error.retry_after_s == seconds  # the domain keeps the exact wait
    trailers = dict(retry_after_metadata(error))
    assert trailers.get(RETRY_AFTER_METADATA) == header


def test_the_shed_reason_is_a_field_not_the_message() -> None:
    shed = ShedError("anything at all", reason=QUEUE_FULL, retry_after_s=2)
    assert (shed.reason, shed.retry_after_s) == (QUEUE_FULL, 2)
    assert errors.HeliosError("x").reason is None


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_code_has_an_openai_error_object(code: ErrorCode) -> None:
    detail = error_detail(errors.HeliosError("why", code=code))
    assert (detail.message, detail.code) == ("why", code.name)
    expected = {
        ErrorCode.INVALID_ARGUMENT: "invalid_request_error",
        ErrorCode.NOT_FOUND: "invalid_request_error",
        ErrorCode.RESOURCE_EXHAUSTED: "rate_limit_error",
        ErrorCode.UNAVAILABLE: "service_unavailable",
    }
    assert detail.type == expected.get(code, "server_error")


def _imports_grpc(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[0] == "grpc" for alias in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "grpc":
            return True
    return False


@pytest.mark.parametrize("module", DOMAIN_ERROR_MODULES)
def test_domain_error_modules_do_not_import_grpc(module: str) -> None:
    assert not _imports_grpc(REPO / module), f"{module} imports grpc"


def _error_class_names() -> set[str]:
    def walk(cls: type[HeliosError]) -> set[str]:
        names = {cls.__name__}
        for sub in cls.__subclasses__():
            names |= walk(sub)
        return names

    return walk(HeliosError)


def test_no_error_class_is_defined_where_grpc_is_imported() -> None:
    """A HeliosError subclass added anywhere in production code (not a servicer's or
    client's gRPC adapter) must live in a module without grpc, so it cannot carry a
    status. Bases are matched by name: the classes this process knows."""
    known = _error_class_names()
    offenders = []
    for package in PRODUCTION_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            defines = [
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef)
                and any(isinstance(b, ast.Name) and b.id in known for b in node.bases)
            ]
            if defines and _imports_grpc(path):
                offenders.append(f"{path.relative_to(REPO)}: {', '.join(defines)}")
    assert offenders == []
