"""Numeric building blocks shared by the methods.

Device ops (JAX, jit-able, batched NHWC): `filters`, `ssim`, `gms`, `masks`,
`mosaic`, `sinkhorn`, `losses`, `normalize`. Host ops (NumPy, run inside grain
workers with a per-example generator): `perlin` (DRAEM-style anomalies),
`cutpaste` (attention-guided cut-paste). Conventions are in each module's
docstring and in docs/ARCHITECTURE.md (Ops section).
"""
