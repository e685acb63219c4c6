"""The registry client: pull and push models over the OCI distribution API (trio + httpx).

``async with RegistryClient.open(config) as client:`` owns one HTTP connection pool for the life
of the daemon (or of one CLI command). Pulls are daemon-wide limited to
``config.max_concurrent_pulls`` (2, as DMR), and single-flight: while a reference is being pulled
into a store, a second pull of it waits for the first and shares its result instead of
downloading again; if the first is cancelled, a waiter takes over.

A pull resolves the manifest (following an index to the entry holding a model), checks the config
media type, and if the model is already in the store only re-applies the tag ("Using cached
model"), with no blob traffic. Otherwise the config and layers download in parallel (bounded),
each streamed into the store's resumable ingest file and hashed on the way; an interrupted
transfer resumes with ``Range`` (accepted only as a 206 whose ``Content-Range`` starts where we
are), both within one pull (retries) and across pulls and processes. A blob becomes visible only
once its digest matched. Pushes check each blob with ``HEAD``, upload missing ones (monolithic, or
chunked ``PATCH`` for big blobs), then ``PUT`` the manifest.

File I/O and hashing run in worker threads (``trio.to_thread``), a few MiB at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

import httpx
import trio
from modelrunner.distribution._transport import LargeReadTransport
from modelrunner.distribution.auth import (
    Challenge,
    Credentials,
    DockerConfig,
    basic_authorization,
    parse_helper_output,
    parse_token_response,
    parse_www_authenticate,
    repository_scope,
)
from modelrunner.distribution.errors import (
    BlobNotFound,
    DigestMismatch,
    DistributionError,
    IngestBusy,
    InvalidManifest,
    RegistryError,
    RegistryUnauthorized,
    RemoteNotFound,
    UnsupportedMediaType,
)
from modelrunner.distribution.oci import (
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    MODEL_CONFIG_MEDIA_TYPES,
    Descriptor,
    Manifest,
    ModelConfig,
    check_model_config_media_type,
    created_unix,
    parse_index,
    parse_manifest,
    parse_model_config,
    sha256_digest,
)
from modelrunner.distribution.progress import Mode, ProgressEvent, ProgressThrottle
from modelrunner.distribution.reference import DEFAULT_REGISTRY, Reference, parse_reference
from modelrunner.distribution.store import BlobIngest, ModelStore

__all__ = [
    "ProgressSink",
    "PullResult",
    "PushResult",
    "RegistryClient",
    "RegistryConfig",
    "RegistryStatistics",
    "RemoteModel",
]

ProgressSink = Callable[[ProgressEvent], Awaitable[None]]
"""Receives progress events; awaited, so a slow consumer slows the transfer (back-pressure)."""

_MANIFEST_ACCEPT: Final = ", ".join(
    (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST,
     MEDIA_TYPE_DOCKER_MANIFEST_LIST)
)
_RETRYABLE_STATUS: Final = (0, 408, 429, 500, 502, 503, 504)
_INDEX_TYPES: Final = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
_MANIFEST_TYPES: Final = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
_CONTENT_RANGE_RE: Final = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_MAX_INDEX_CANDIDATES: Final = 16
_INGEST_POLL: Final = 0.2
# Received bytes are handed to a worker thread (write + hash) in batches of this size.
_FLUSH_BYTES: Final = 4 * 1024 * 1024
_FLUSH_SECONDS: Final = 0.25


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().strip("'\"").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Registry settings; build with :meth:`from_environ` from DMR's environment variables."""

    insecure: bool = False
    """``INSECURE_REGISTRY=true``: plain HTTP to every registry (loopback/``*.local`` always are)."""
    mirrors: tuple[str, ...] = ()
    """``MODEL_RUNNER_REGISTRY_MIRRORS``: Docker Hub mirrors tried, in order, before Docker Hub."""
    default_registry: str = DEFAULT_REGISTRY
    docker_config_path: Path | None = None
    """``~/.docker/config.json`` (``$DOCKER_CONFIG/config.json``); None: no stored credentials."""
    user_agent: str = "modelrunner/0.1"
    max_concurrent_pulls: int = 2
    max_parallel_blobs: int = 4
    max_attempts: int = 5
    """Tries per blob transfer; each retry after a broken connection resumes where it stopped."""
    chunked_upload_threshold: int = 256 * 1024 * 1024
    upload_chunk_size: int = 64 * 1024 * 1024
    connect_timeout: float = 30.0
    stall_timeout: float = 120.0
    """Seconds without a byte on an open connection before it counts as broken (and is retried)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, home: str | None = None) -> RegistryConfig:
        """Read ``INSECURE_REGISTRY``, ``MODEL_RUNNER_REGISTRY_MIRRORS``, ``DEFAULT_REGISTRY`` and
        ``DOCKER_CONFIG`` from ``environ`` (cli/ passes ``os.environ``)."""
        mirrors = tuple(
            m.strip() for m in environ.get("MODEL_RUNNER_REGISTRY_MIRRORS", "").strip("'\" ").split(",")
            if m.strip()
        )
        docker_dir = environ.get("DOCKER_CONFIG", "").strip()
        base = Path(docker_dir) if docker_dir else Path(home or Path.home()) / ".docker"
        default_registry = environ.get("DEFAULT_REGISTRY", "").strip().strip("'\"") or DEFAULT_REGISTRY
        return cls(
            insecure=_env_flag(environ.get("INSECURE_REGISTRY")),
            mirrors=mirrors,
            default_registry=default_registry,
            docker_config_path=base / "config.json",
        )


@dataclass(frozen=True, slots=True)
class PullResult:
    model_id: str
    reference: str
    cached: bool = False
    """The model was already in the store; only the tag was (re)applied."""
    shared: bool = False
    """Another pull of the same reference did the download; this one waited for it."""
    downloaded_bytes: int = 0


@dataclass(frozen=True, slots=True)
class PushResult:
    model_id: str
    reference: str
    uploaded_bytes: int = 0
    skipped_blobs: int = 0


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """A model as the registry describes it (DMR's ``GET /models/{ref}?remote=true``)."""

    id: str
    reference: str
    manifest: Manifest
    config: ModelConfig

    def to_dmr_json(self) -> dict[str, Any]:
        """DMR's Model object for a remote model (no ``tags``)."""
        return {"id": self.id, "created": created_unix(self.config.created),
                "config": dict(self.config.config)}


@dataclass(frozen=True, slots=True)
class RegistryStatistics:
    pulls_running: int
    pulls_waiting: int
    references_in_flight: tuple[str, ...]


@dataclass(slots=True)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    result: PullResult | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Endpoint:
    base: str  # "https://registry-1.docker.io"
    host: str  # registry name used for credentials ("docker.io", "127.0.0.1:5000")


class _Auth:
    """Authorization for one repository on one endpoint, learnt from challenges and cached."""

    def __init__(self, client: RegistryClient, endpoint: _Endpoint, repository: str,
                 actions: tuple[str, ...], bearer_token: str | None) -> None:
        self._client = client
        self._endpoint = endpoint
        self._repository = repository
        self._actions = actions
        self.header = f"Bearer {bearer_token}" if bearer_token else ""
        self._explicit = bool(bearer_token)
        self._expires = math.inf

    def current(self) -> str:
        if self.header and time.monotonic() >= self._expires:
            self.header = ""
        return self.header

    async def answer(self, response: httpx.Response) -> bool:
        """Learn from a 401; True when a retry may now succeed."""
        if self._explicit:
            return False
        challenges = parse_www_authenticate(response.headers.get("www-authenticate", ""))
        creds = await self._client._credentials(self._endpoint.host)
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.realm:
                token, lifetime = await self._client._fetch_token(challenge, creds, self._repository,
                                                                  self._actions)
                self.header = f"Bearer {token}"
                self._expires = time.monotonic() + max(lifetime - 10, 5)
                return True
            if challenge.scheme == "basic":
                if creds is None or not (creds.username or creds.password):
                    return False
                if self.header.startswith("Basic "):
                    return False  # these credentials were just refused
                self.header = basic_authorization(creds.username, creds.password)
                return True
        return False


def _error_from(response: httpx.Response, what: str) -> RegistryError:
    code, message = "", ""
    with contextlib.suppress(Exception):
        body = response.json()
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code", ""))
            message = str(errors[0].get("message", ""))
    detail = f"{code}: {message}" if code else (message or response.reason_phrase)
    text = f"{what}: registry answered {response.status_code} ({detail})"
    status = response.status_code
    if status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
        return RegistryUnauthorized(text, status=status, code=code)
    if status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
        return RemoteNotFound(text, status=status, code=code)
    return RegistryError(text, status=status, code=code)


def _transport_error(exc: httpx.HTTPError, what: str) -> RegistryError:
    return RegistryError(f"{what}: {type(exc).__name__}: {exc}")


@final
class RegistryClient:
    """Pull, push and inspect models. Create with :meth:`open`."""

    def __init__(self, config: RegistryConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self._http = http
        self._pull_limiter = trio.CapacityLimiter(config.max_concurrent_pulls)
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._tokens: dict[tuple[str, str, str, str], tuple[str, float]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: RegistryConfig | None = None) -> AsyncIterator[RegistryClient]:
        """The client and its connection pool, closed when the block exits."""
        config = config or RegistryConfig()
        timeout = httpx.Timeout(config.stall_timeout, connect=config.connect_timeout)
        transport = LargeReadTransport(max_connections=64, max_keepalive_connections=16)
        # trust_env: HTTP(S)_PROXY/NO_PROXY are honoured (httpx mounts proxy transports beside ours).
        async with httpx.AsyncClient(timeout=timeout, transport=transport, follow_redirects=True,
                                     max_redirects=10, headers={"User-Agent": config.user_agent},
                                     trust_env=True) as http:
            yield cls(config, http)

    def statistics(self) -> RegistryStatistics:
        stats = self._pull_limiter.statistics()
        return RegistryStatistics(stats.borrowed_tokens, stats.tasks_waiting,
                                  tuple(ref for _, ref in self._flights))

    # --- endpoints and auth -----------------------------------------------------------------------

    def _endpoints(self, ref: Reference) -> list[_Endpoint]:
        scheme = "http" if (self.config.insecure or ref.is_local) else "https"
        primary = _Endpoint(f"{scheme}://{ref.api_host}", ref.registry)
        if not ref.is_docker_hub or not self.config.mirrors:
            return [primary]
        mirrors = []
        for mirror in self.config.mirrors:
            base = mirror.rstrip("/")
            if "://" not in base:
                base = f"{'http' if self.config.insecure else 'https'}://{base}"
            mirrors.append(_Endpoint(base, httpx.URL(base).netloc.decode()))
        return [*mirrors, primary]

    async def _credentials(self, registry: str) -> Credentials | None:
        path = self.config.docker_config_path
        if path is None:
            return None
        try:
            data = await trio.to_thread.run_sync(path.read_bytes)
        except OSError:
            return None
        config = DockerConfig.parse(data)
        inline = config.inline_credentials(registry)
        if inline is not None:
            return inline
        helper = config.helper_for(registry)
        if not helper:
            return None
        try:
            proc = await trio.run_process(
                [f"docker-credential-{helper}", "get"],
                stdin=config.helper_server_url(registry).encode(),
                capture_stdout=True, capture_stderr=True, check=False,
            )
        except OSError:
            return None
        return parse_helper_output(proc.stdout) if proc.returncode == 0 else None

    async def _fetch_token(self, challenge: Challenge, creds: Credentials | None, repository: str,
                           actions: tuple[str, ...]) -> tuple[str, int]:
        if creds is not None and creds.registry_token:
            return creds.registry_token, 3600
        service = challenge.params.get("service", "")
        scope = repository_scope(repository, actions)
        identity = creds.username if creds else ""
        key = (challenge.realm, service, scope, identity)
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0], int(cached[1] - time.monotonic())
        params = {"scope": scope}
        if service:
            params["service"] = service
        try:
            if creds is not None and creds.identity_token:
                response = await self._http.post(challenge.realm, data={
                    "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": service, "scope": scope, "client_id": "modelrunner"})
            else:
                headers = {}
                if creds is not None and (creds.username or creds.password):
                    headers["Authorization"] = basic_authorization(creds.username, creds.password)
                    params["account"] = creds.username
                response = await self._http.get(challenge.realm, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, f"token server {challenge.realm}") from exc
        if response.status_code in (401, 403):
            raise RegistryUnauthorized(
                f"token server {challenge.realm} refused the credentials for {scope} "
                f"({response.status_code}); check `docker login` or the bearer token",
                status=response.status_code)
        if response.status_code != 200:
            raise _error_from(response, f"token server {challenge.realm}")
        try:
            token, lifetime = parse_token_response(response.content)
        except ValueError as exc:
            raise RegistryError(f"token server {challenge.realm}: {exc}") from exc
        self._tokens[key] = (token, time.monotonic() + max(lifetime - 10, 5))
        return token, lifetime

    async def _send(self, auth: _Auth, method: str, url: str, *, what: str,
                    headers: Mapping[str, str] | None = None, content: Any = None,
                    stream: bool = False, replayable: bool = True) -> httpx.Response:
        """Send with authorization, answering one 401 challenge; maps transport errors.

        The caller closes a streamed response (``await response.aclose()``).
        """
        for attempt in range(2):
            request_headers = dict(headers or {})
            if auth.current():
                request_headers["Authorization"] = auth.current()
            request = self._http.build_request(method, url, headers=request_headers, content=content)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, what) from exc
            if response.status_code == 401 and attempt == 0 and replayable:
                try:
                    await response.aread()  # small error body; kept for the caller's message
                except httpx.HTTPError as exc:
                    raise _transport_error(exc, what) from exc
                finally:
                    await response.aclose()
                if await auth.answer(response):
                    continue
            return response
        raise AssertionError("unreachable")

    # --- manifests --------------------------------------------------------------------------------

    async def _get_manifest(self, auth: _Auth, endpoint: _Endpoint, ref: Reference,
                            reference: str) -> tuple[bytes, str]:
        url = f"{endpoint.base}/v2/{ref.repository}/manifests/{reference}"
        response = await self._send(auth, "GET", url, what=f"manifest {ref.name}:{reference}",
                                    headers={"Accept": _MANIFEST_ACCEPT}, stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                raise _error_from(response, f"manifest {ref.repository}:{reference} on {endpoint.host}")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise InvalidManifest(f"manifest {ref}: larger than {MAX_MANIFEST_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise _transport_error(exc, f"manifest {ref}") from exc
        finally:
            await response.aclose()
        data = bytes(body)
        digest = sha256_digest(data)
        announced = response.headers.get("docker-content-digest", "")
        if announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(announced, digest, what="manifest")
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatch(reference, digest, what="manifest")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return data, media_type

    async def _resolve(self, ref: Reference, actions: tuple[str, ...],
                       bearer_token: str | None) -> tuple[_Endpoint, _Auth, bytes, Manifest]:
        """Find the model manifest of ``ref``: on the first endpoint (mirror) that has it, through
        an index if needed. Returns the endpoint, its auth, the raw manifest and its parse."""
        failures: list[RegistryError] = []
        endpoints = self._endpoints(ref)
        for endpoint in endpoints:
            auth = _Auth(self, endpoint, ref.repository, actions, bearer_token)
            try:
                data, media_type = await self._get_manifest(auth, endpoint, ref, ref.manifest_reference)
                data = await self._select_from_index(auth, endpoint, ref, data, media_type)
            except RegistryError as exc:
                failures.append(exc)
                if endpoint is endpoints[-1]:
                    raise
                continue  # a mirror that fails or lacks the model: try the next one
            manifest = parse_manifest(data, media_type)
            check_model_config_media_type(manifest.config.media_type)
            return endpoint, auth, data, manifest
        raise failures[-1]

    async def _select_from_index(self, auth: _Auth, endpoint: _Endpoint, ref: Reference, data: bytes,
                                 media_type: str) -> bytes:
        declared = media_type
        with contextlib.suppress(ValueError, AttributeError):
            declared = json.loads(data).get("mediaType") or media_type
        if declared not in _INDEX_TYPES:
            return data
        index = parse_index(data, declared)
        seen_configs: list[str] = []
        candidates = [m for m in index.manifests if m.media_type in _MANIFEST_TYPES][:_MAX_INDEX_CANDIDATES]
        for candidate in candidates:
            child, child_type = await self._get_manifest(auth, endpoint, ref, candidate.digest)
            manifest = parse_manifest(child, child_type or candidate.media_type)
            if manifest.config.media_type in MODEL_CONFIG_MEDIA_TYPES:
                return child
            seen_configs.append(manifest.config.media_type)
        raise UnsupportedMediaType(
            ", ".join(seen_configs) or "(no manifests)", MODEL_CONFIG_MEDIA_TYPES,
            what="no index entry is a model; config",
        )

    async def inspect_remote(self, reference: str, *, bearer_token: str | None = None) -> RemoteModel:
        """Manifest and config of a remote model, without storing anything.

        Raises:
            InvalidReference, RegistryError (RemoteNotFound, RegistryUnauthorized),
            UnsupportedMediaType, DigestMismatch.
        """
        ref = parse_reference(reference, default_registry=self.config.default_registry)
        endpoint, auth, data, manifest = await self._resolve(ref, ("pull",), bearer_token)
        config_bytes = await self._get_small_blob(auth, endpoint, ref, manifest.config)
        config = parse_model_config(config_bytes, manifest.config.media_type)
        return RemoteModel(sha256_digest(data), str(ref), manifest, config)

    async def _get_small_blob(self, auth: _Auth, endpoint: _Endpoint, ref: Reference,
                              descriptor: Descriptor) -> bytes:
        if descriptor.size > MAX_CONFIG_BYTES:
            raise InvalidManifest(f"config blob {descriptor.digest} is {descriptor.size} bytes; too large")
        url = f"{endpoint.base}/v2/{ref.repository}/blobs/{descriptor.digest}"
        response = await self._send(auth, "GET", url, what=f"blob {descriptor.digest}")
        if response.status_code != 200:
            raise _error_from(response, f"blob {descriptor.digest} of {ref.name}")
        data = response.content
        if sha256_digest(data) != descriptor.digest:
            raise DigestMismatch(descriptor.digest, sha256_digest(data))
        return data

    # --- pull -------------------------------------------------------------------------------------

    async def pull(self, reference: str, store: ModelStore, *, progress: ProgressSink | None = None,
                   bearer_token: str | None = None) -> PullResult:
        """Pull ``reference`` into ``store`` and tag it there; a checkpoint.

        Waits for a pull slot (at most ``max_concurrent_pulls`` run at once). A concurrent pull
        of the same reference into the same store is joined, not repeated. Cancelling leaves the
        partial download in place for the next pull to resume.

        Raises:
            InvalidReference: ``reference`` is malformed.
            RemoteNotFound (404), RegistryUnauthorized (401), RegistryError: from the registry.
            UnsupportedMediaType (422): the artifact is not a model.
            DigestMismatch: content did not match its digest; nothing of it was stored.
        """
        ref = parse_reference(reference, default_registry=self.config.default_registry)
        key = (str(store.root), str(ref))
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                if progress is not None:
                    message = "Using cached model" if flight.result.cached else "Model pulled successfully"
                    await progress(ProgressEvent.success(Mode.PULL, message))
                return PullResult(flight.result.model_id, flight.result.reference, flight.result.cached,
                                  shared=True)
            if flight.error is not None and not _is_cancellation(flight.error):
                raise flight.error
            # The leader was cancelled: loop, and become the leader if nobody else has.
        flight = _Flight()
        self._flights[key] = flight
        try:
            async with self._pull_limiter:
                flight.result = await self._pull(ref, store, progress, bearer_token)
            return flight.result
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    async def _pull(self, ref: Reference, store: ModelStore, progress: ProgressSink | None,
                    bearer_token: str | None) -> PullResult:
        endpoint, auth, manifest_bytes, manifest = await self._resolve(ref, ("pull",), bearer_token)
        model_id = sha256_digest(manifest_bytes)
        tags = [str(ref.with_tag(ref.tag))] if ref.tag else []
        if await trio.to_thread.run_sync(store.has_model, model_id):
            await trio.to_thread.run_sync(store.commit, manifest_bytes, tags)
            model = await trio.to_thread.run_sync(store.get, model_id)
            if progress is not None:
                await progress(ProgressEvent.success(Mode.PULL, f"Using cached model: {model.config.size}"))
            return PullResult(model_id, str(ref), cached=True)
        total = sum(layer.size for layer in manifest.layers)
        throttle = ProgressThrottle(Mode.PULL, total, time.monotonic)
        downloaded = 0
        for _attempt in range(2):
            counts: list[int] = []

            async def fetch(descriptor: Descriptor, limiter: trio.CapacityLimiter,
                            counts: list[int] = counts) -> None:
                async with limiter:
                    counts.append(await self._fetch_blob(auth, endpoint, ref, descriptor, store,
                                                         throttle, progress))

            limiter = trio.CapacityLimiter(self.config.max_parallel_blobs)
            try:
                async with trio.open_nursery() as nursery:
                    for descriptor in _unique(manifest.blobs()):
                        nursery.start_soon(fetch, descriptor, limiter)
            except* DistributionError as group:
                raise _first_error(group) from None
            downloaded += sum(counts)
            try:
                await trio.to_thread.run_sync(store.commit, manifest_bytes, tags)
                break
            except BlobNotFound:
                continue  # a concurrent delete removed a shared blob after we saw it: fetch again
        else:
            raise RegistryError(f"pull of {ref}: blobs kept disappearing from the store while committing")
        if progress is not None:
            await progress(ProgressEvent.success(Mode.PULL, "Model pulled successfully"))
        return PullResult(model_id, str(ref), downloaded_bytes=downloaded)

    async def _open_ingest(self, store: ModelStore, descriptor: Descriptor) -> BlobIngest | None:
        while True:
            try:
                return await trio.to_thread.run_sync(store.open_ingest, descriptor.digest, descriptor.size)
            except IngestBusy:
                await trio.sleep(_INGEST_POLL)  # another pull (maybe another process) writes it

    async def _fetch_blob(self, auth: _Auth, endpoint: _Endpoint, ref: Reference, descriptor: Descriptor,
                          store: ModelStore, throttle: ProgressThrottle,
                          progress: ProgressSink | None) -> int:
        """Download one blob into the store, resuming and retrying; returns bytes transferred."""
        is_layer = descriptor.media_type not in MODEL_CONFIG_MEDIA_TYPES

        async def report(current: int) -> None:
            if progress is not None and is_layer:
                event = throttle.update(descriptor.digest, descriptor.size, current)
                if event is not None:
                    await progress(event)

        transferred = 0
        failures = 0
        while True:
            ingest = await self._open_ingest(store, descriptor)
            if ingest is None:
                await report(descriptor.size)
                return transferred
            try:
                if ingest.complete:
                    await trio.to_thread.run_sync(ingest.commit)
                    await report(descriptor.size)
                    return transferred
                before = ingest.offset
                try:
                    await self._stream_into(auth, endpoint, ref, descriptor, ingest, report)
                except RegistryError as exc:
                    transferred += ingest.offset - before
                    progressed = ingest.offset > before
                    failures = 0 if progressed else failures + 1
                    if exc.status not in _RETRYABLE_STATUS or failures >= self.config.max_attempts:
                        raise
                    await trio.sleep(min(0.2 * 2**failures, 5.0))
                    continue
                transferred += ingest.offset - before
                await trio.to_thread.run_sync(ingest.commit)
                return transferred
            finally:
                # Cancelled or not, the ingest lock must go, or the next pull waits for ever.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(ingest.close)

    async def _stream_into(self, auth: _Auth, endpoint: _Endpoint, ref: Reference, descriptor: Descriptor,
                           ingest: BlobIngest, report: Callable[[int], Awaitable[None]]) -> None:
        url = f"{endpoint.base}/v2/{ref.repository}/blobs/{descriptor.digest}"
        offset = ingest.offset
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        what = f"blob {descriptor.digest} of {ref.name}"
        response = await self._send(auth, "GET", url, what=what, headers=headers, stream=True)
        pending = bytearray()
        try:
            if response.status_code == 416 and offset:
                await trio.to_thread.run_sync(ingest.restart)  # our partial file is longer than the blob
                raise RegistryError(f"{what}: range not satisfiable; restarting", status=503)
            if response.status_code == 206 and offset:
                match = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
                if match is None or int(match.group(1)) != offset:
                    await trio.to_thread.run_sync(ingest.restart)
                    raise RegistryError(f"{what}: the server resumed at the wrong offset; restarting",
                                        status=503)
            elif response.status_code == 200:
                if offset:
                    await trio.to_thread.run_sync(ingest.restart)  # Range ignored: start over
            else:
                await response.aread()
                raise _error_from(response, what)
            last_flush = time.monotonic()
            async for chunk in response.aiter_raw():
                pending += chunk
                # Big batches for throughput; a time bound so a slow link still saves its progress.
                if len(pending) >= _FLUSH_BYTES or time.monotonic() - last_flush >= _FLUSH_SECONDS:
                    data = bytes(pending)
                    pending.clear()
                    await trio.to_thread.run_sync(ingest.write, data)
                    last_flush = time.monotonic()
                    await report(ingest.offset)
            if pending:
                data = bytes(pending)
                pending.clear()
                await trio.to_thread.run_sync(ingest.write, data)
            await report(ingest.offset)
            if ingest.offset != descriptor.size:
                raise RegistryError(
                    f"{what}: connection closed at {ingest.offset} of {descriptor.size} bytes")
        except httpx.HTTPError as exc:
            raise _transport_error(exc, what) from exc
        finally:
            # Whatever arrived before a failure or a cancellation is kept for the next attempt
            # (a later pull, maybe in another process, resumes from it), so it is written even now.
            with trio.CancelScope(shield=True):
                if pending:
                    with contextlib.suppress(DistributionError, OSError):
                        await trio.to_thread.run_sync(ingest.write, bytes(pending))
                await response.aclose()

    # --- push -------------------------------------------------------------------------------------

    async def push(self, reference: str, store: ModelStore, *, progress: ProgressSink | None = None,
                   bearer_token: str | None = None, source: str | None = None) -> PushResult:
        """Push the model ``source`` (default: ``reference``) from ``store`` to ``reference``.

        Raises:
            ModelNotFound: no such model in the store.
            InvalidReference, RegistryError (RegistryUnauthorized...), DigestMismatch: the
                registry stored a manifest with another digest.
        """
        ref = parse_reference(reference, default_registry=self.config.default_registry)
        model = await trio.to_thread.run_sync(store.get, source or reference)
        manifest_bytes = await trio.to_thread.run_sync(store.read_blob, model.id)
        endpoint = self._endpoints(ref)[-1]  # mirrors are read-only
        auth = _Auth(self, endpoint, ref.repository, ("pull", "push"), bearer_token)
        total = sum(layer.size for layer in model.manifest.layers)
        throttle = ProgressThrottle(Mode.PUSH, total, time.monotonic)
        uploaded: list[int] = []
        skipped: list[str] = []
        # Learn the authorization with a cheap request, so uploads (not replayable) start authorized.
        await self._blob_exists(auth, endpoint, ref, model.manifest.config)

        async def push_blob(descriptor: Descriptor, limiter: trio.CapacityLimiter) -> None:
            async with limiter:
                if await self._blob_exists(auth, endpoint, ref, descriptor):
                    skipped.append(descriptor.digest)
                    if progress is not None and descriptor in model.manifest.layers:
                        event = throttle.update(descriptor.digest, descriptor.size, descriptor.size)
                        if event is not None:
                            await progress(event)
                    return
                uploaded.append(await self._upload(auth, endpoint, ref, store, descriptor, throttle,
                                                   progress if descriptor in model.manifest.layers else None))

        limiter = trio.CapacityLimiter(self.config.max_parallel_blobs)
        try:
            async with trio.open_nursery() as nursery:
                for descriptor in _unique(model.manifest.blobs()):
                    nursery.start_soon(push_blob, descriptor, limiter)
        except* DistributionError as group:
            raise _first_error(group) from None
        target = ref.digest or ref.tag
        url = f"{endpoint.base}/v2/{ref.repository}/manifests/{target}"
        response = await self._send(auth, "PUT", url, what=f"manifest {ref}", content=manifest_bytes,
                                    headers={"Content-Type": model.manifest.media_type})
        if response.status_code not in (200, 201, 202):
            raise _error_from(response, f"manifest {ref}")
        stored = response.headers.get("docker-content-digest", "")
        if stored.startswith("sha256:") and stored != model.id:
            raise DigestMismatch(model.id, stored, what="pushed manifest")
        if progress is not None:
            await progress(ProgressEvent.success(Mode.PUSH, "Model pushed successfully"))
        return PushResult(model.id, str(ref), sum(uploaded), len(skipped))

    async def _blob_exists(self, auth: _Auth, endpoint: _Endpoint, ref: Reference,
                           descriptor: Descriptor) -> bool:
        url = f"{endpoint.base}/v2/{ref.repository}/blobs/{descriptor.digest}"
        response = await self._send(auth, "HEAD", url, what=f"blob {descriptor.digest}")
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise _error_from(response, f"blob {descriptor.digest} of {ref.name}")

    def _location(self, endpoint: _Endpoint, response: httpx.Response, what: str) -> httpx.URL:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload location", status=response.status_code)
        return httpx.URL(endpoint.base).join(location)

    async def _upload(self, auth: _Auth, endpoint: _Endpoint, ref: Reference, store: ModelStore,
                      descriptor: Descriptor, throttle: ProgressThrottle,
                      progress: ProgressSink | None) -> int:
        what = f"upload of {descriptor.digest} to {ref.name}"
        uploads = f"{endpoint.base}/v2/{ref.repository}/blobs/uploads/"
        start = await self._send(auth, "POST", uploads, what=what, headers={"Content-Length": "0"})
        if start.status_code != 202:
            raise _error_from(start, what)
        location = self._location(endpoint, start, what)
        path = store.blob_path(descriptor.digest)
        sent = 0

        async def body(begin: int, end: int) -> AsyncIterator[bytes]:
            nonlocal sent
            with open(path, "rb") as f:  # noqa: ASYNC230 - reads happen in a worker thread below
                await trio.to_thread.run_sync(f.seek, begin)
                remaining = end - begin
                while remaining:
                    chunk = await trio.to_thread.run_sync(f.read, min(4 * 1024 * 1024, remaining))
                    if not chunk:
                        raise BlobNotFound(descriptor.digest)
                    remaining -= len(chunk)
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        event = throttle.update(descriptor.digest, descriptor.size, sent)
                        if event is not None:
                            await progress(event)

        size = descriptor.size
        if size <= self.config.chunked_upload_threshold:
            response = await self._send(
                auth, "PUT", str(location.copy_add_param("digest", descriptor.digest)), what=what,
                content=body(0, size), replayable=False,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            if response.status_code not in (201, 204):
                raise _error_from(response, what)
            return size
        begin = 0
        while begin < size:
            end = min(begin + self.config.upload_chunk_size, size)
            response = await self._send(
                auth, "PATCH", str(location), what=what, content=body(begin, end), replayable=False,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(end - begin),
                         "Content-Range": f"{begin}-{end - 1}"})
            if response.status_code != 202:
                raise _error_from(response, what)
            location = self._location(endpoint, response, what)
            begin = end
        response = await self._send(auth, "PUT", str(location.copy_add_param("digest", descriptor.digest)),
                                    what=what, headers={"Content-Length": "0"})
        if response.status_code not in (201, 204):
            raise _error_from(response, what)
        return size


def _unique(descriptors: tuple[Descriptor, ...]) -> list[Descriptor]:
    seen: set[str] = set()
    out = []
    for descriptor in descriptors:
        if descriptor.digest not in seen:
            seen.add(descriptor.digest)
            out.append(descriptor)
    return out



def _first_error(group: BaseExceptionGroup[DistributionError]) -> DistributionError:
    """The first domain error of a failed transfer group.

    Blob transfers run in a nursery; when one fails the others are cancelled, so the group almost
    always holds one error. Callers map errors to statuses, so they get that typed error; any
    others (two blobs failing at once) are attached as notes rather than lost.
    """
    errors: list[DistributionError] = []

    def collect(item: BaseException) -> None:
        if isinstance(item, BaseExceptionGroup):
            for inner in item.exceptions:
                collect(inner)
        elif isinstance(item, DistributionError):
            errors.append(item)

    collect(group)
    first = errors[0]
    for other in errors[1:]:
        first.add_note(f"also: {other}")
    return first


def _is_cancellation(exc: BaseException) -> bool:
    """True for trio.Cancelled, alone or as the only content of (nested) exception groups."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False
