"""Wire types of private networks: named networks that sandboxes join at creation
(``CreateSandboxRequest.network_attachment``) to reach each other by name, as the
services of a compose file do.  Kept apart from :mod:`hutch.api.models`; the engine's side
is :mod:`hutch.engine.lifecycle.networks`."""

from __future__ import annotations

from pydantic import Field, field_validator

from hutch.api.models import NetworkAttachment, _check_name, _Wire

__all__ = ["CreateNetworkRequest", "NetworkAttachment", "NetworkInfo", "NetworkList",
           "NetworkMember"]


class CreateNetworkRequest(_Wire):
    name: str
    #: an existing network of that name is an error (else it is returned as it is)
    must_create: bool = False
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)

    _name = field_validator("name")(_check_name("network"))


class NetworkMember(_Wire):
    sandbox_id: str
    #: its IPv4 address on the network
    address: str
    #: the names it is found by on the network (its aliases, its name and its id)
    names: list[str]


class NetworkInfo(_Wire):
    network_id: str
    name: str
    #: the network's IPv4 subnet (a /24 of 10.89.0.0/16)
    subnet: str
    created_at: float
    labels: dict[str, str] = Field(default_factory=dict)
    members: list[NetworkMember] = Field(default_factory=list)


class NetworkList(_Wire):
    networks: list[NetworkInfo]
