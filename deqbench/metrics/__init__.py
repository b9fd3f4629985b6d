"""Metrics: PSNR (both conventions of JIIO Table 4), FID (Table 1), an offline sliced Wasserstein distance and the
post-hoc latent density (section 4.1)."""

from deqbench.metrics.distance import SlicedWasserstein, sliced_wasserstein
from deqbench.metrics.fid import (
    FID_WEIGHTS_SHA256,
    FIDResult,
    UInt8ImageDataset,
    compute_fid,
    fid_weights_status,
    save_image_folder,
    to_uint8_rgb,
)
from deqbench.metrics.psnr import median_psnr, psnr_per_image, reference_batch_psnr

__all__ = [
    "FID_WEIGHTS_SHA256",
    "FIDResult",
    "SlicedWasserstein",
    "UInt8ImageDataset",
    "compute_fid",
    "fid_weights_status",
    "median_psnr",
    "psnr_per_image",
    "reference_batch_psnr",
    "save_image_folder",
    "sliced_wasserstein",
    "to_uint8_rgb",
]
