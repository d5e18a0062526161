"""The binary-convolution kernel of the packed XNOR-Net runner, a plain C library loaded with ctypes.

Optional: where it cannot be compiled the package still installs and only ``--packed`` is unavailable. No
``-march`` flag: every instruction-set path is compiled per function and chosen at run time (csrc/binconv.c).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "compactnets.deploy._binconv",
            sources=["src/compactnets/deploy/csrc/binconv.c"],
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
