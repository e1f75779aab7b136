"""Export: rnnkit models to ONNX (``export_onnx``), checked with onnxruntime.

See ``docs/export.md``. onnx, onnxruntime and onnxscript are imported only when an export
runs (``pip install 'rnnkit[onnx]'``).
"""

from rnnkit.export.onnx import (
    UNSUPPORTED,
    CellSupport,
    ExampleInputs,
    ExportCheckError,
    ExportError,
    Unsupported,
    UnsupportedExportError,
    example_inputs_for,
    export_onnx,
    export_run,
    exportable_cells,
)

__all__ = [
    "UNSUPPORTED",
    "CellSupport",
    "ExampleInputs",
    "ExportCheckError",
    "ExportError",
    "Unsupported",
    "UnsupportedExportError",
    "example_inputs_for",
    "export_onnx",
    "export_run",
    "exportable_cells",
]
