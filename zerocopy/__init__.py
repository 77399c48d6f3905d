"""Zero-copy safetensors loading: tensors built directly on a file's memory mapping.

The header is validated before any tensor is made (see :mod:`zerocopy.header`); the
tensors' storage is the mapping itself (``torch.frombuffer`` on a private, copy-on-write
``mmap``), so loading copies no bytes and a warm load costs page-table work only.
"""

from zerocopy.header import (
    DTYPE_SIZES,
    MAX_HEADER_BYTES,
    SafetensorsHeaderError,
    TensorSpec,
    parse_header,
    read_header,
)
from zerocopy.loader import (
    CheckpointError,
    MappedFile,
    checkpoint_files,
    load_checkpoint,
    load_file,
    load_pretrained,
    map_file,
)

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "CheckpointError",
    "MappedFile",
    "SafetensorsHeaderError",
    "TensorSpec",
    "checkpoint_files",
    "load_checkpoint",
    "load_file",
    "load_pretrained",
    "map_file",
    "parse_header",
    "read_header",
]
