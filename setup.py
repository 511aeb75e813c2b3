"""Build hook for the one C extension: cachefs._accel (batch AES-GCM decryption over OpenSSL).

Everything else about the package lives in pyproject.toml. The extension is optional: without a C
compiler or the OpenSSL headers (Debian: gcc, libssl-dev) the install still succeeds and cachefs
uses its pure-Python decryption (see cachefs/accel.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "cachefs._accel",
            sources=["cachefs/_accel.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
