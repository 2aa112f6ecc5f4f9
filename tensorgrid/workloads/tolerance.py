"""How far two honest executions of one program may differ, per dtype and device class.

Honest nodes do not agree bit for bit: BLAS kernels sum in an order that depends on the
thread count and batch size, and GPUs use other kernels again. Measured here (torch 2.13
CPU, float32 GELU MLPs of width 64/384/1024 and depth 1/6/12, 1,024 rows, threads 1 vs 2,
batch sizes 1, 7, 256 and all rows): max |a-b| = 4.5e-8. The float32 tolerance (atol 1e-4,
rtol 1e-3) leaves three orders of magnitude of room for other CPUs and models, and is still
far below what a corrupted row changes. Integer and bool outputs must match exactly.

CUDA: `CUDA_FACTOR` widens both bounds whenever either side of a comparison ran on CUDA
(see `device_class`). Not calibrated on a GPU (none on the machine this was written on);
the factor is derived from what CUDA changes: cuDNN convolutions run in TF32 by default
(10-bit mantissa, relative error ~1e-3 per product, accumulated in float32: ~1e-3 relative
on typical outputs), matmuls do not unless allow_tf32 is set, and reductions use other
summation orders (~1e-6 relative). 10x puts float32 at rtol 1e-2 / atol 1e-3, above TF32's
error and still far below a corrupted row (the adversary tests add >= 0.5 or random noise).
To calibrate on a GPU: `python -m tensorgrid.tools.calibrate_tolerance` runs the architecture
matrix on CPU and CUDA over the same rows at several batch sizes (as the CPU figure above was
measured) and reports the worst ratio max|a-b| / (atol + rtol*|b|) per architecture; set the
factor to 10x the worst ratio found (its "factor_with_margin"), keeping the CPU table
(docs/MODELS.md, "Calibrating the CUDA factor").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# (atol, rtol) per floating dtype (safetensors names), for CPU↔CPU comparisons. Other dtypes
# (integers, bool, float8, complex) must match exactly.
TOLERANCES: dict[str, tuple[float, float]] = {
    "F64": (1e-8, 1e-6),
    "F32": (1e-4, 1e-3),
    "F16": (1e-2, 1e-2),
    "BF16": (5e-2, 5e-2),
}
CUDA_FACTOR = 10.0
# torch's dtype names (str(dtype)) of the table's dtypes: torch callers use the same table
_TORCH_NAMES = {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}


def device_class(*device_kinds: str) -> str:
    """The comparison class of a comparison between outputs computed on these devices."""
    return "cuda" if any(str(kind).startswith("cuda") for kind in device_kinds) else "cpu"


def tolerance(dtype: str | torch.dtype, device_class: str = "cpu") -> tuple[float, float]:
    """(atol, rtol) of a dtype, by its safetensors name ("F32") or as a torch dtype."""
    name = str(dtype)
    atol, rtol = TOLERANCES.get(_TORCH_NAMES.get(name, name), (0.0, 0.0))
    factor = CUDA_FACTOR if device_class == "cuda" else 1.0
    return atol * factor, rtol * factor
