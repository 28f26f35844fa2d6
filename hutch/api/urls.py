"""The paths of the engine's API: the routes declare these templates, and the SDK and the
CLI fill them in (``urls.EXEC_WAIT.format(exec_id=...)``), so the two sides cannot drift.

Why here: ``hutch/api`` is what both sides share; about a hundred ``/v1/...`` literals
were spelled separately in the routes, the SDK and the CLI.
"""

from __future__ import annotations

V1 = "/v1"

HEALTH = V1 + "/health"
ENGINE = V1 + "/engine"
ENGINE_CA = ENGINE + "/ca"
ENGINE_SHUTDOWN = ENGINE + "/shutdown"
#: whether the engine could checkpoint a sandbox (Modal's memory snapshots), measured by it
ENGINE_CHECKPOINT = ENGINE + "/checkpoint"

APPS_LOOKUP = V1 + "/apps/lookup"
APP = V1 + "/apps/{app_id}"
APP_STOP = APP + "/stop"
APP_TAGS = APP + "/tags"
#: timed log entries of a sandbox or of an app's sandboxes
LOGS = V1 + "/logs"

IMAGES = V1 + "/images"
IMAGES_BUILD = IMAGES + "/build"
IMAGES_DEFAULT = IMAGES + "/default"
IMAGES_INSPECT = IMAGES + "/inspect"
IMAGES_PRUNE = IMAGES + "/prune"
IMAGES_PUSH = IMAGES + "/push"
IMAGES_TAG = IMAGES + "/tag"
IMAGE_CONTEXT = IMAGES + "/contexts/{digest}"

SANDBOXES = V1 + "/sandboxes"
SANDBOXES_BY_NAME = SANDBOXES + "/by-name"
SANDBOX = SANDBOXES + "/{sandbox_id}"
SANDBOX_CONNECT_TOKENS = SANDBOX + "/connect-tokens"
SANDBOX_EXECS = SANDBOX + "/execs"
SANDBOX_LOGS = SANDBOX + "/logs"
SANDBOX_STDIN = SANDBOX + "/stdin"
SANDBOX_TAGS = SANDBOX + "/tags"
#: the size of a ``pty=True`` sandbox's terminal (PUT)
SANDBOX_TERMINAL = SANDBOX + "/terminal"
SANDBOX_TERMINATE = SANDBOX + "/terminate"
SANDBOX_TUNNELS = SANDBOX + "/tunnels"
SANDBOX_WAIT = SANDBOX + "/wait"
SANDBOX_WAIT_UNTIL_READY = SANDBOX + "/wait_until_ready"
#: a sandbox's files, under which the ``FS_*`` calls are
SANDBOX_FS = SANDBOX + "/fs"

EXEC = V1 + "/execs/{exec_id}"
EXEC_KILL = EXEC + "/kill"
EXEC_OUTPUT = EXEC + "/output"
#: a pty exec's terminal size (PUT)
EXEC_TERMINAL = EXEC + "/terminal"
EXEC_STDIN = EXEC + "/stdin"
EXEC_WAIT = EXEC + "/wait"

POOLS = V1 + "/pools"
POOL = POOLS + "/{pool_id}"
POOL_WAIT = POOL + "/wait"

VOLUMES = V1 + "/volumes"
VOLUMES_LOOKUP = VOLUMES + "/lookup"
#: a volume, under which its files' ``FS_*`` calls are
VOLUME = VOLUMES + "/{name}"
VOLUME_RENAME = VOLUME + "/rename"

#: The calls on files, under ``SANDBOX_FS`` or ``VOLUME`` (a volume has file, list, remove
#: and copy).
FS_FILE, FS_LIST, FS_MKDIR, FS_REMOVE = "/file", "/list", "/mkdir", "/remove"
FS_STAT, FS_WATCH, FS_COPY = "/stat", "/watch", "/copy"

#: filesystem snapshots and images mounted into a running sandbox (issue 19)
SANDBOX_SNAPSHOT_FILESYSTEM = SANDBOX + "/snapshot-filesystem"
SANDBOX_SNAPSHOT_DIRECTORY = SANDBOX + "/snapshot-directory"
SANDBOX_MOUNT_IMAGE = SANDBOX + "/mount-image"
SANDBOX_UNMOUNT_IMAGE = SANDBOX + "/unmount-image"

#: private networks between sandboxes (``hutch network``)
NETWORKS = V1 + "/networks"
NETWORK = NETWORKS + "/{name}"

#: how many sandboxes the engine's reserve keeps (``PUT``; its state is in ``ENGINE``)
ENGINE_RESERVE = V1 + "/engine/reserve"
