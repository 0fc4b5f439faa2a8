"""Networks, training, inference and attribution (torch, torchvision, captum).

Imports nothing of ours and knows nothing of SQL. Submodules import torch lazily where they can,
so `models.images` stays usable without it.
"""
