"""Fixtures of the collector tests."""

from __future__ import annotations

import pytest

from tests.conftest import S3Server


@pytest.fixture(scope="module")
def s3_endpoint(s3_server: S3Server) -> str:
    """``host:port`` of the module's moto S3 server (tests/conftest.py)."""
    return f"127.0.0.1:{s3_server.port}"
