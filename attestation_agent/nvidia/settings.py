"""``[aa]`` settings of the NVIDIA GPU attester (caiOptions ``gpu-ra-enable``)."""

from __future__ import annotations

from agents.settings import Setting

GPU_SETTINGS: tuple[Setting, ...] = (
    Setting("gpu_ra_enable", bool, False,
            "Attest the NVIDIA GPUs (caiOptions gpu-ra-enable): collect each GPU's SPDM report and "
            "certificate chain through NVML, verify them locally, and send them with the TEE evidence."),
    Setting("gpu_set_ready", bool, True,
            "After a successful attestation, set the GPUs' confidential-computing ready state so CUDA "
            "accepts work (nvidia-smi conf-compute -srs 1). Never set when GPU verification failed."),
)
