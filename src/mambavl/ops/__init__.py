"""Selective-scan operators (the SSM core of Mamba) with interchangeable backends."""

from .selective_scan import (
    BACKENDS,
    initial_state_contribution,
    is_mamba_ssm_available,
    mamba_ssm_import_error,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
    selective_scan_torch,
)

__all__ = [
    "BACKENDS",
    "initial_state_contribution",
    "is_mamba_ssm_available",
    "mamba_ssm_import_error",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]
