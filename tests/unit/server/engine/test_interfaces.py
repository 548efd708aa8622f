"""The engine of one process and the cluster's remote engine are one interface to the API
(server/engine/interface.py): each implementation has every member, methods with the same
parameters, coroutines where the interface has them."""

from __future__ import annotations

import inspect

import pytest

from qadapter.server.cluster.remote import RemoteEngine, RemoteStream
from qadapter.server.cluster.store_view import StoreView
from qadapter.server.engine.engine import Engine
from qadapter.server.engine.interface import AdapterCatalog, EventStream, ServingEngine
from qadapter.server.engine.registry import AdapterRegistry
from qadapter.server.engine.stream import RequestStream

MISSING = object()


def mismatches(implementation: type, interface: type) -> list[str]:
    """Members of `interface` that `implementation` lacks or declares differently."""
    found = []
    annotated = {name for cls in implementation.__mro__ for name in getattr(cls, "__annotations__", {})}
    for name, member in vars(interface).items():
        if name.startswith("_") and name not in ("__aiter__", "__anext__"):
            continue
        ours = inspect.getattr_static(implementation, name, MISSING)
        if isinstance(member, property):
            if ours is MISSING and name not in annotated:
                found.append(f"{name}: no attribute or property")
            continue
        if not callable(ours):
            found.append(f"{name}: no method")
            continue
        if inspect.iscoroutinefunction(member) != inspect.iscoroutinefunction(ours):
            found.append(f"{name}: coroutine in one, not in the other")
        if list(inspect.signature(member).parameters) != list(inspect.signature(ours).parameters):
            found.append(f"{name}: parameters {inspect.signature(ours)} instead of {inspect.signature(member)}")
    return found


@pytest.mark.parametrize(
    ("implementation", "interface"),
    [
        (Engine, ServingEngine),
        (RemoteEngine, ServingEngine),
        (AdapterRegistry, AdapterCatalog),
        (StoreView, AdapterCatalog),
        (RequestStream, EventStream),
        (RemoteStream, EventStream),
    ],
)
def test_each_implementation_is_the_interface(implementation: type, interface: type) -> None:
    assert mismatches(implementation, interface) == []


def test_the_check_sees_a_difference() -> None:
    class Partial:
        adapters = None

        def open(self, other: object) -> None: ...

    assert {problem.split(":")[0] for problem in mismatches(Partial, ServingEngine)} == {
        "max_context",
        "is_running",
        "is_idle",
        "open",
        "is_resident",
        "abort_all",
        "replica_stats",
    }
