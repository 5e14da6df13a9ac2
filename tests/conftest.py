"""Test-session set-up: 8 fake CPU devices, so sharding tests run on any machine.

XLA reads the flag when the CPU backend starts, so it must be set before JAX is imported.
Computations not explicitly sharded stay on the first device.
"""

import os

flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

# One persistent XLA compilation cache for the whole session, shared by the xdist workers and
# the subprocesses tests start (environment variables are inherited): many tests compile the
# same programs (the quickstart pipeline in several files, killed-and-resumed runs), and a
# cache hit skips the compile. JAX keys entries by the program and its versions, so it is safe.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"jirl-test-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
