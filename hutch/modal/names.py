"""Where each of Modal's names lives in hutch: ``"module:attribute"`` for what hutch does,
a kind of refusal (:mod:`hutch.modal.unsupported`) for what it does not.

Why a table: the names are Modal's interface, compared mechanically with Modal's client
(``tests/integration/test_modal_names.py``), and one table shows at a glance what hutch
covers; each ``modal.X`` submodule is made from its entry on first import.
"""

from __future__ import annotations

#: A name hutch provides ("module:attribute"), or a refusal kind ("!functions").
Where = str

_CLOUD, _FUNCTIONS, _STORAGE = "!cloud", "!functions", "!storage"

#: ``modal.<name>``: the package's own names.
TOP: dict[str, Where] = {
    "App": "hutch.sdk.app:App",
    "Error": "hutch.exception:Error",
    "Image": "hutch.sdk.image:Image",
    "Probe": "hutch.sdk.probe:Probe",
    "Sandbox": "hutch.sdk.sandbox:Sandbox",
    "Secret": "hutch.sdk.secret:Secret",
    "Tunnel": "hutch.sdk.tunnel:Tunnel",
    "Volume": "hutch.sdk.volume:Volume",
    "enable_output": "hutch.sdk.output:enable_output",
    "is_local": "hutch.modal.runtime:is_local",
    "current_input_id": "hutch.modal.runtime:current_input_id",
    "current_function_call_id": "hutch.modal.runtime:current_function_call_id",
    "interact": "hutch.modal.runtime:interact",
    "SandboxSnapshot": _CLOUD,
    "Client": _CLOUD,
    "CloudBucketMount": _CLOUD,
    "Cluster": _CLOUD,
    "Environment": _CLOUD,
    "Proxy": _CLOUD,
    "SchedulerPlacement": _CLOUD,
    "Workspace": _CLOUD,
    "forward": _CLOUD,
    "Cls": _FUNCTIONS,
    "Cron": _FUNCTIONS,
    "FilePatternMatcher": _FUNCTIONS,
    "Function": _FUNCTIONS,
    "FunctionCall": _FUNCTIONS,
    "Period": _FUNCTIONS,
    "Retries": _FUNCTIONS,
    "Server": _FUNCTIONS,
    "asgi_app": _FUNCTIONS,
    "batched": _FUNCTIONS,
    "clustered": _FUNCTIONS,
    "concurrent": _FUNCTIONS,
    "enter": _FUNCTIONS,
    "exit": _FUNCTIONS,
    "fastapi_endpoint": _FUNCTIONS,
    "method": _FUNCTIONS,
    "parameter": _FUNCTIONS,
    "sessioned": _FUNCTIONS,
    "web_endpoint": _FUNCTIONS,
    "web_server": _FUNCTIONS,
    "wsgi_app": _FUNCTIONS,
    "Dict": _STORAGE,
    "NetworkFileSystem": _STORAGE,
    "Queue": _STORAGE,
}

#: ``modal.<module>.<name>``, for the submodules programs import (``modal.exception`` is
#: ``hutch.exception`` itself).
SUBMODULES: dict[str, dict[str, Where]] = {
    "app": {"App": TOP["App"], "LocalEntrypoint": "hutch.sdk.appentries:LocalEntrypoint"},
    "image": {"Image": TOP["Image"]},
    "sandbox": {"Sandbox": TOP["Sandbox"], "Probe": TOP["Probe"],
                "SandboxSnapshot": _CLOUD, "SidecarContainer": _CLOUD},
    "container_process": {"ContainerProcess": "hutch.sdk.process:ContainerProcess"},
    "io_streams": {"StreamReader": "hutch.sdk.streams:StreamReader",
                   "StreamWriter": "hutch.sdk.streams:StreamWriter"},
    "stream_type": {"StreamType": "hutch.sdk.streams:StreamType"},
    "secret": {"Secret": TOP["Secret"], "SecretManager": "hutch.sdk.secret:SecretManager"},
    "volume": {"Volume": TOP["Volume"], "VolumeManager": "hutch.sdk.volume:VolumeManager"},
    "output": {"enable_output": TOP["enable_output"]},
    "config": {"config": "hutch.modal.runtime:config",
               "Config": "hutch.modal.runtime:Config",
               "config_profiles": "hutch.modal.runtime:config_profiles",
               "config_set_active_profile": "hutch.modal.runtime:config_set_active_profile",
               "logger": "hutch.modal.runtime:logger",
               "_profile": "hutch.modal.runtime:PROFILE"},
    "file_io": {"FileIO": "hutch.sdk.fileio:FileIO",
                "FileWatchEvent": "hutch.sdk.files:FileWatchEvent",
                "FileWatchEventType": "hutch.sdk.files:FileWatchEventType"},
    "types": {"FileType": "hutch.sdk.files:FileType",
              "FileEntryType": "hutch.sdk.files:FileType",
              "FileEntry": "hutch.sdk.volume:VolumeEntry",
              "FileInfo": "hutch.sdk.files:FileInfo",
              "FileWatchEvent": "hutch.sdk.files:FileWatchEvent",
              "FileWatchEventType": "hutch.sdk.files:FileWatchEventType",
              "SecretInfo": "hutch.sdk.secret:SecretInfo",
              "VolumeInfo": "hutch.sdk.volume:VolumeInfo"},
    "snapshot": {"SandboxSnapshot": _CLOUD},
    "experimental": {},
    "client": {"Client": _CLOUD},
    "functions": {"Function": _FUNCTIONS, "FunctionCall": _FUNCTIONS},
    "cls": {"Cls": _FUNCTIONS, "parameter": _FUNCTIONS},
    "partial_function": {name: _FUNCTIONS for name in (
        "asgi_app", "batched", "clustered", "concurrent", "enter", "exit",
        "fastapi_endpoint", "method", "sessioned", "web_endpoint", "web_server", "wsgi_app")},
    "schedule": {"Cron": _FUNCTIONS, "Period": _FUNCTIONS},
    "retries": {"Retries": _FUNCTIONS},
    "server": {"Server": _FUNCTIONS},
    "dict": {"Dict": _STORAGE},
    "queue": {"Queue": _STORAGE},
    "network_file_system": {"NetworkFileSystem": _STORAGE},
    "proxy": {"Proxy": _CLOUD},
    "cloud_bucket_mount": {"CloudBucketMount": _CLOUD},
    "cluster": {"Cluster": _CLOUD},
    "environments": {"Environment": _CLOUD},
    "workspace": {"Workspace": _CLOUD},
    "scheduler_placement": {"SchedulerPlacement": _CLOUD},
    "file_pattern_matcher": {"FilePatternMatcher": _FUNCTIONS},
    "billing": {"workspace_billing_report": _CLOUD},
}
