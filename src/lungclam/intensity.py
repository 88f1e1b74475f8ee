"""Network inputs from Hounsfield units: the linear HU window every model stage shares.

Images enter the network as ``float32`` in ``[0, 1]`` with the background (air, -1024 HU)
at 0: CLAM multiplies inputs by activation maps, and a masked-out voxel should then look
like background. Numpy only, so the imaging stages and the model stages can both use it.
"""

from __future__ import annotations

import numpy as np


def normalize_hu(hu: np.ndarray, min_hu: float = -1024.0, max_hu: float = 200.0) -> np.ndarray:
    """Map HU to ``[0, 1]``: ``min_hu`` (background) -> 0, ``max_hu`` -> 1, clipped; float32."""
    if max_hu <= min_hu:
        raise ValueError(f"max_hu ({max_hu}) must exceed min_hu ({min_hu})")
    out = (np.asarray(hu, dtype=np.float32) - np.float32(min_hu)) / np.float32(max_hu - min_hu)
    return np.clip(out, 0.0, 1.0, out=out)
