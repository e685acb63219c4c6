"""modelrunner.shim: containerd integration (gRPC client, engine images, task lifecycle, embedded
containerd, re-adoption).

Public names are re-exported here; the submodules ``images`` and ``tasks`` also hold the functions
under their short names (``images.get``, ``tasks.start_task``). See shim/README.md.
"""

from modelrunner.shim.client import (
    DEFAULT_NAMESPACE,
    DEFAULT_SNAPSHOTTER,
    Containerd,
    PluginStatus,
    VersionInfo,
    open_containerd,
)
from modelrunner.shim.embedded import (
    EmbeddedContainerd,
    EmbeddedPaths,
    EmbeddedStatistics,
    open_embedded_containerd,
)
from modelrunner.shim.errors import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    IllegalTransition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from modelrunner.shim.events import (
    Event,
    EventsLost,
    EventsResynced,
    TaskCreate,
    TaskDelete,
    TaskExit,
    TaskOOM,
    TaskStart,
)
from modelrunner.shim.health import probe_health
from modelrunner.shim.images import (
    ContentSource,
    Image,
    ImageInstaller,
    InstallState,
    InstallStatus,
    OCILayoutTarball,
    import_from_source,
    import_tarball,
    open_oci_tarball,
)
from modelrunner.shim.images import get as get_image
from modelrunner.shim.images import list_refs as list_images
from modelrunner.shim.images import pull as pull_image
from modelrunner.shim.images import remove as remove_image
from modelrunner.shim.labels import RunnerLabels
from modelrunner.shim.lifecycle import TaskLifecycle, TaskPhase
from modelrunner.shim.oci import Descriptor, ImageConfig, Platform
from modelrunner.shim.tasks import (
    DEFAULT_RUNTIME,
    LOST_EXIT,
    ExitStatus,
    Reconciliation,
    RunnerRecord,
    RunningTask,
    TaskRequest,
    TaskStatus,
    adopt,
    cleanup_orphans,
    list_runners,
    reconcile_runners,
    start_task,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_RUNTIME",
    "DEFAULT_SNAPSHOTTER",
    "LOST_EXIT",
    "AlreadyExists",
    "Containerd",
    "ContainerdError",
    "ContentSource",
    "Descriptor",
    "EmbeddedContainerd",
    "EmbeddedPaths",
    "EmbeddedStatistics",
    "Event",
    "EventsLost",
    "EventsResynced",
    "ExitStatus",
    "FailedPrecondition",
    "IllegalTransition",
    "Image",
    "ImageConfig",
    "ImageInstaller",
    "InstallState",
    "InstallStatus",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OCILayoutTarball",
    "Platform",
    "PluginStatus",
    "Reconciliation",
    "ResourceExhausted",
    "RunnerLabels",
    "RunnerRecord",
    "RunningTask",
    "TaskCreate",
    "TaskDelete",
    "TaskExit",
    "TaskLifecycle",
    "TaskOOM",
    "TaskPhase",
    "TaskRequest",
    "TaskStart",
    "TaskStatus",
    "Unavailable",
    "VersionInfo",
    "adopt",
    "cleanup_orphans",
    "get_image",
    "import_from_source",
    "import_tarball",
    "list_images",
    "list_runners",
    "open_containerd",
    "open_embedded_containerd",
    "open_oci_tarball",
    "probe_health",
    "pull_image",
    "reconcile_runners",
    "remove_image",
    "start_task",
]
