"""Transport-neutral errors (issue 18): domain errors carry an ErrorCode, never a gRPC
status; runtime.grpc_errors is the one mapping to and from gRPC, total over ErrorCode;
and every error class is defined in runtime.errors, which imports neither grpc nor any
service package."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc
import pytest

from openai_compat.protocol import error_detail
from proxy.limits import QUEUE_FULL
from runtime import errors
from runtime.errors import (
    BlobStoreError,
    DataLossError,
    DisaggregationFailed,
    EngineDeadError,
    EngineError,
    ErrorCode,
    HeliosError,
    HubPermissionError,
    RelayedError,
    ShedError,
    UnauthenticatedError,
    error_from_code,
)
from runtime.grpc_errors import (
    RETRY_AFTER_METADATA,
    STATUS_BY_CODE,
    error_code,
    error_from_status,
    grpc_status,
    retry_after_metadata,
)

REPO = Path(__file__).resolve().parents[2]

# Where every HeliosError subclass lives: transport-neutral, so it must not know gRPC.
ERRORS_MODULE = "runtime/errors.py"
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
        (DataLossError("x"), grpc.StatusCode.DATA_LOSS),
        (BlobStoreError("x"), grpc.StatusCode.UNAVAILABLE),
        (HubPermissionError("x"), grpc.StatusCode.PERMISSION_DENIED),
        (EngineError("x"), grpc.StatusCode.INTERNAL),
        (EngineDeadError("x"), grpc.StatusCode.UNAVAILABLE),
        (DisaggregationFailed("x", frozenset()), grpc.StatusCode.UNAVAILABLE),
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


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    packages: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def test_the_errors_module_imports_neither_grpc_nor_a_service_package() -> None:
    assert not _imports_grpc(REPO / ERRORS_MODULE)
    services = set(PRODUCTION_PACKAGES) - {"runtime"}
    assert _imported_packages(REPO / ERRORS_MODULE) & (services | {"helios"}) == set()


def _error_class_names() -> set[str]:
    def walk(cls: type[HeliosError]) -> set[str]:
        names = {cls.__name__}
        for sub in cls.__subclasses__():
            names |= walk(sub)
        return names

    return walk(HeliosError)


def test_every_error_class_is_defined_in_the_errors_module() -> None:
    """A HeliosError subclass added anywhere in production code belongs in
    runtime/errors.py, which has no grpc, so it cannot carry a status. Bases are matched
    by name: the classes this process knows."""
    known = _error_class_names()
    offenders = []
    for package in PRODUCTION_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == REPO / ERRORS_MODULE:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            defines = [
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef)
                and any(
                    isinstance(base, ast.Name | ast.Attribute)
                    and (base.id if isinstance(base, ast.Name) else base.attr) in known
                    for base in node.bases
                )
            ]
            if defines:
                offenders.append(f"{path.relative_to(REPO)}: {', '.join(defines)}")
    assert offenders == []
