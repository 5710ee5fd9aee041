"""Hooks through which other packages extend a real node, without the node importing them.

A real node runs honestly and sends at once. Two test-and-research features bend that:
a Byzantine strategy (``[byzantine] strategy``) and injected link delays (``[transport]
send_delay``, how ``jungle sim --mode process`` models its network). Both belong to the
simulator, and the product's node must not depend on its simulator (STYLE 14): so the node
defines what it needs here, as :class:`NodePlugin`, and finds an implementation through the
``jungle.node`` entry point group (the simulator registers ``sim.node_plugin:PLUGIN`` in
pyproject.toml). Nothing is loaded unless a config asks for one of the two features.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any, Final, Protocol

#: the entry point group a plugin registers under
ENTRY_POINT_GROUP: Final = "jungle.node"

#: the transport's injected delay: (dst, seq, size_bytes) -> seconds to hold the message
SendDelay = Callable[[int, int, int], float]


class PluginUnavailable(Exception):
    """No installed package provides the node plugin (or it failed to load)."""


class NodePlugin(Protocol):
    def load_strategy(self, spec: object) -> Any:
        """A Byzantine strategy from its spec (a name, a table or a list); ValueError,
        TypeError or ImportError saying what is wrong."""
        ...

    def bind_strategy(
        self,
        strategy: Any,
        *,
        protocol_config: Any,
        scheme: Any,
        seed: int,
        current_step: Callable[[], int],
        num_classes: int,
    ) -> None:
        """Give ``strategy`` what it may know at run time (a real node: no other node's
        vectors)."""
        ...

    def send_delay(self, spec: object, *, seed: int, me: int) -> SendDelay:
        """``[transport] send_delay`` as a function; ValueError saying what is wrong."""
        ...


def load_plugin() -> NodePlugin:
    """The installed node plugin; :class:`PluginUnavailable` with the reason otherwise."""
    found = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    if not found:
        raise PluginUnavailable(
            f"no package registers the {ENTRY_POINT_GROUP!r} entry point (install jungle "
            f"with its simulator: pip install -e .)"
        )
    try:
        plugin: NodePlugin = found[0].load()
    except Exception as error:  # a broken plugin is one line, not a traceback
        raise PluginUnavailable(f"cannot load {found[0].value}: {error!r}") from None
    return plugin
