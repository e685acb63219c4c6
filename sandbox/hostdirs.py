"""The host side of the sandbox's one writable directory (blocking file-system calls).

``/run/engine`` inside the sandbox is a host directory of its own per runner. The engine must be
able to create its socket there and nobody else should: the directory is made ``0700`` and owned by
the engine's uid and gid as the host sees them (under user namespace remapping, the mapped ids).
The daemon, as root, can still connect to the socket.
"""

from __future__ import annotations

import os
import stat

from modelrunner.sandbox.errors import InvalidSandboxRequest
from modelrunner.sandbox.spec import SandboxRequest

__all__ = ["prepare_engine_dir"]


def prepare_engine_dir(request: SandboxRequest) -> None:
    """Create ``request.engine_dir`` (its parent must exist) for the engine's user (blocking).

    An existing empty directory is taken over; anything else at the path is refused, so a stale
    socket or a symlink planted there cannot be handed to a new engine.

    Raises:
        InvalidSandboxRequest: the path exists and is not an empty directory, or its parent is missing.
    """
    path = request.engine_dir
    if request.userns is not None:
        uid, gid = request.userns.host_uid(request.uid), request.userns.host_gid(request.gid)
    else:
        uid, gid = request.uid, request.gid
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidSandboxRequest("engine_dir", f"{path} exists and is not a directory") from None
        if os.listdir(path):
            raise InvalidSandboxRequest(
                "engine_dir", f"{path} is not empty; a runner's engine directory must start empty"
            ) from None
    except FileNotFoundError:
        raise InvalidSandboxRequest("engine_dir", f"the parent of {path} does not exist") from None
    # O_NOFOLLOW|O_DIRECTORY: change the directory made or checked above, never a symlink's target.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
