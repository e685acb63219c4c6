"""modelrunner.api: the trio HTTP server: Docker Model Runner's `/models` and `/engines` API, the
OpenAI-compatible inference proxy to runners, and `/metrics`."""

from modelrunner.api._app import ApiApp, ApiServices
from modelrunner.api._config import ApiConfig, InvalidBindAddress, parse_bind_address
from modelrunner.api._cors import DEFAULT_ORIGINS, CorsPolicy, parse_origins
from modelrunner.api._distribution import DistributionModels
from modelrunner.api._errors import ApiError, map_exception
from modelrunner.api._http import ServerLimits
from modelrunner.api._server import ApiServer, ListenerError, open_api_server, serve
from modelrunner.api.ports import (
    BackendPort,
    BackendsPort,
    LeasePort,
    ModelManager,
    RunnerRow,
    SchedulerPort,
)

__all__ = [
    "DEFAULT_ORIGINS",
    "ApiApp",
    "ApiConfig",
    "ApiError",
    "ApiServer",
    "ApiServices",
    "BackendPort",
    "BackendsPort",
    "CorsPolicy",
    "DistributionModels",
    "InvalidBindAddress",
    "LeasePort",
    "ListenerError",
    "ModelManager",
    "RunnerRow",
    "SchedulerPort",
    "ServerLimits",
    "map_exception",
    "open_api_server",
    "parse_bind_address",
    "parse_origins",
    "serve",
]
