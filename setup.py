# The only reason this file exists: cffi builds the C kernels at install time.
from setuptools import setup

setup(cffi_modules=["kernels_c/build_ffi.py:ffibuilder"])
