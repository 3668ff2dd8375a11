"""A Flower federation in one process: the Message API's strategies and ClientApps, without Ray or a SuperLink.

`LocalGrid` is a `flwr.serverapp.Grid` that hands each message straight to the ClientApp of its destination
node (mods included) and returns the reply, so ``strategy.start(grid=LocalGrid(...), ...)`` runs a real
federation — Flower's own strategy, messages, records and client mods — in the calling thread. Each node keeps
one `flwr.app.Context` across rounds with the ``partition-id`` / ``num-partitions`` node config that Flower's
simulation engine gives, so a ClientApp written for ``flwr run`` runs here unchanged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore.task_identity import TaskIdentity

from fedinvert.errors import ConfigError

log = logging.getLogger(__name__)

#: Flower's error code for an exception raised inside a ClientApp (``flwr.common.constant.ErrorCode``).
CLIENT_APP_RAISED_EXCEPTION = 2
SERVER_NODE_ID = 1


class LocalGrid(Grid):
    """Delivers every message to the in-process ClientApp of its node and collects the replies.

    Args:
        client_app: the ClientApp every node runs.
        num_nodes: how many nodes (≥ 1); their ids are 1001, 1002, ... and partition ids 0, 1, ...
        run_id: the run's id in the nodes' contexts.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, *, run_id: int = 1) -> None:
        if not isinstance(client_app, ClientApp):
            raise ConfigError(f"client_app must be a flwr.clientapp.ClientApp, got {type(client_app).__name__}")
        if not isinstance(num_nodes, int) or num_nodes < 1:
            raise ConfigError(f"num_nodes must be a positive integer, got {num_nodes!r}")
        self.client_app = client_app
        self.node_ids = [1001 + i for i in range(num_nodes)]
        self.contexts = {
            node: Context(run_id=run_id, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": i, "num-partitions": num_nodes})
            for i, node in enumerate(self.node_ids)
        }
        self._run: Any = None
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def deliver(self, message: Message) -> Message:
        """The reply of the destination node's ClientApp; an exception inside it becomes an error reply, as
        Flower's runtime does it."""
        node = int(message.metadata.dst_node_id)
        if node not in self.contexts:
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=f"no node {node}"), reply_to=message)
        try:
            return self.client_app(message, self.contexts[node])
        except Exception as err:  # the federation goes on without this node, as it would with a real one
            log.warning("node %d: the ClientApp raised %s: %s", node, type(err).__name__, err)
            reason = f"{type(err).__name__}: {err}"
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            key = str(uuid.uuid4())
            self._replies[key] = self.deliver(message)
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(key) for key in message_ids if key in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self.deliver(message) for message in messages]


def run_local(
    strategy: Strategy,
    client_app: ClientApp,
    *,
    num_nodes: int,
    initial_arrays: ArrayRecord,
    num_rounds: int,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Any = None,
) -> Result:
    """Run ``strategy`` for ``num_rounds`` against ``num_nodes`` in-process nodes running ``client_app``.

    Flower's messages take their run and source ids from the process's task identity, which its runtime sets;
    here it is set to a server task of run 1 when nothing has set it.
    """
    if not isinstance(num_rounds, int) or num_rounds < 1:
        raise ConfigError(f"num_rounds must be a positive integer, got {num_rounds!r}")
    for attribute, value in (("run_id", 1), ("node_id", SERVER_NODE_ID), ("task_id", 1)):
        try:
            getattr(TaskIdentity, attribute)
        except RuntimeError:
            setattr(TaskIdentity, attribute, value)
    grid = LocalGrid(client_app, num_nodes)
    return strategy.start(
        grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds, train_config=train_config,
        evaluate_config=evaluate_config, evaluate_fn=evaluate_fn,
    )


__all__ = ["LocalGrid", "run_local"]
