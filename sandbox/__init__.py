"""modelrunner.sandbox: the default-deny OCI runtime spec engines run in, CDI devices, GPU inventory.

Public names are re-exported here; import them from ``modelrunner.sandbox``.
"""

from modelrunner.sandbox.cdi import (
    DEFAULT_CDI_DIRS,
    CDIDevice,
    CDIDeviceNodeSpec,
    CDIEditsSpec,
    CDIRegistry,
    CDISpec,
    discover_cdi,
    load_cdi_spec_file,
    parse_cdi_spec,
    parse_device_name,
)
from modelrunner.sandbox.edits import ContainerEdits, DeviceNode, EditMount, Hook, IntelRdt
from modelrunner.sandbox.errors import (
    CDIDeviceNotFound,
    CDIError,
    CDISpecError,
    CDIUnsupported,
    HostDeviceError,
    InvalidSandboxRequest,
    NetnsError,
    SandboxError,
)
from modelrunner.sandbox.gpus import GpuDevice, GpuInventory, discover_gpus, parse_nvidia_smi_csv
from modelrunner.sandbox.hostdirs import prepare_engine_dir
from modelrunner.sandbox.netns import (
    NetInterface,
    create_loopback_netns,
    netns_interfaces,
    netns_path,
    open_loopback_netns,
    remove_netns,
)
from modelrunner.sandbox.seccomp import SeccompProfile, default_profile, parse_profile
from modelrunner.sandbox.spec import (
    ENGINE_DIR_IN_CONTAINER,
    MODELS_DIR_IN_CONTAINER,
    CpuLimits,
    IdMapping,
    SandboxRequest,
    UserNamespace,
    build_spec,
    device_mount_points,
    memory_limit_for_reservation,
)

__all__ = [
    "DEFAULT_CDI_DIRS",
    "ENGINE_DIR_IN_CONTAINER",
    "MODELS_DIR_IN_CONTAINER",
    "CDIDevice",
    "CDIDeviceNodeSpec",
    "CDIDeviceNotFound",
    "CDIEditsSpec",
    "CDIError",
    "CDIRegistry",
    "CDISpec",
    "CDISpecError",
    "CDIUnsupported",
    "ContainerEdits",
    "CpuLimits",
    "DeviceNode",
    "EditMount",
    "GpuDevice",
    "GpuInventory",
    "Hook",
    "HostDeviceError",
    "IdMapping",
    "IntelRdt",
    "InvalidSandboxRequest",
    "NetInterface",
    "NetnsError",
    "SandboxError",
    "SandboxRequest",
    "SeccompProfile",
    "UserNamespace",
    "build_spec",
    "create_loopback_netns",
    "default_profile",
    "device_mount_points",
    "discover_cdi",
    "discover_gpus",
    "load_cdi_spec_file",
    "memory_limit_for_reservation",
    "netns_interfaces",
    "netns_path",
    "open_loopback_netns",
    "parse_cdi_spec",
    "parse_device_name",
    "parse_nvidia_smi_csv",
    "parse_profile",
    "prepare_engine_dir",
    "remove_netns",
]
