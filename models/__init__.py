"""Networks, training, inference and attribution (torch, torchvision, captum).

Imports nothing of ours and knows nothing of SQL. Submodules import torch lazily where they can,
so `models.images` stays usable without it.
"""

# Set (to 1, true or yes) to forbid downloading pretrained weights: `active --offline` sets it,
# and the processes it starts inherit it.
OFFLINE_ENV = "ACTIVE_OFFLINE"
