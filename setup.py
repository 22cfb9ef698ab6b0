# The compiled MinHash kernel (kernels/_cminhash.c), built ahead of time by `pip install`. Optional:
# without a C compiler the build goes on and fitsketch uses its PyTorch path (same signatures).
# Everything else about the package is in pyproject.toml.
from setuptools import Extension, setup

setup(ext_modules=[Extension("fitsketch.kernels._cminhash", ["kernels/_cminhash.c"],
                             extra_compile_args=["-O3"], optional=True)])
