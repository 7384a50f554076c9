"""The security tests reuse the tools' fixtures: loopback HTTP targets, a workspace,
a throwaway PostgreSQL and Redis."""

from tests.tools.conftest import http_target, pg_dsn, unused_port, workspace
from tests.tools.test_caching import redis_server

__all__ = ["http_target", "pg_dsn", "redis_server", "unused_port", "workspace"]
