"""The registry's typed settings (registry/settings.py): each bad flag or variable is
reported under its own field; sizes, the Hub's own variables and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.server import build_parser
from registry.settings import RegistrySettings
from runtime.config import ConfigError
from runtime.settings import from_namespace


def parse(argv: list[str]) -> RegistrySettings:
    return from_namespace(RegistrySettings, build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--chunk-size", "0"], "chunk_size"),
        (["--max-upload-bytes", "-1"], "max_upload_bytes"),
        (["--import-root", "/nonexistent/helios-imports"], "import_root"),
    ],
)
def test_a_bad_flag_is_reported_under_its_own_field(argv: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(argv)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("HELIOS_REGISTRY_BLOB_BACKEND", "gcs", "blob_backend"),
        ("HELIOS_S3_ADDRESSING_STYLE", "diagonal", "s3_addressing_style"),
        ("HELIOS_REGISTRY_S3_CREATE_BUCKET", "sure", "s3_create_bucket"),
    ],
)
def test_a_bad_variable_is_reported_under_its_flag(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        parse([])
    assert raised.value.field == field


def test_sizes_booleans_and_the_hubs_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HELIOS_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.local")
    monkeypatch.setenv("HELIOS_REGISTRY_HF_ENDPOINT", "http://ignored")  # not a Helios one
    monkeypatch.setenv("HELIOS_AZURE_CREATE_CONTAINER", "TRUE")
    monkeypatch.setenv("HELIOS_REGISTRY_S3_PART_SIZE", "8MiB")
    settings = parse(["--max-upload-bytes", "2GiB", "--import-root", str(tmp_path)])
    assert settings.data_dir == tmp_path / "registry"
    assert settings.hf_endpoint == "http://hub.local"
    assert settings.azure_create_container and not settings.s3_create_bucket
    assert (settings.s3_part_size, settings.max_upload_bytes) == (8 << 20, 2 << 30)
    assert settings.import_root == (tmp_path,)
    with pytest.raises(SystemExit):  # argparse: "not a byte size"
        parse(["--azure-block-size", "lots"])
