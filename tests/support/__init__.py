"""Test support: real fixtures fetched from package registries, and llama.cpp as an oracle.

Import as `from support import fixtures, llamacpp` (pytest puts tests/ on sys.path through
tests/conftest.py). Everything is cached under $QCONVERT_CACHE (default ~/.cache/qconvert).
"""
