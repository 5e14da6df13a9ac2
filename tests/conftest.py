"""Test-session set-up: 8 fake CPU devices, so sharding tests run on any machine.

XLA reads the flag when the CPU backend starts, so it must be set before JAX is imported.
Computations not explicitly sharded stay on the first device.
"""

import os

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

