"""The hybrid encoder core library: one definition of every network the service runs.

Importing this package is cheap and torch-free: `hybrid.contracts`, `hybrid.media` and `hybrid.profiles` are
used by the gateway, which must never import torch. The model families (`hybrid.vlm`, `hybrid.spatial`,
`hybrid.fusion`, `hybrid.decoder`) import torch and are loaded only by Triton's models, export and tests.
"""
