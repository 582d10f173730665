"""Protocol steps a node runs when the coordinator drives a job.

A step handler is ``handler(runtime, header, inbound) -> iterator of StepMessage``:
``header`` is the first message of the stream (with the signed job spec), ``inbound`` the
rest. Every handler first checks the spec (``admit.checked_spec``), so a coordinator
cannot make a node act on a job its requester did not sign.
"""
from __future__ import annotations

from typing import Callable, Iterator

from pc_common.errors import InvalidInput
from pc_common.pb import node_pb2

Handler = Callable[..., Iterator[node_pb2.StepMessage]]
STEPS: dict[str, Handler] = {}


def step(name: str):
    def register(fn: Handler) -> Handler:
        STEPS[name] = fn
        return fn
    return register


def handler(name: str) -> Handler:
    _load()
    fn = STEPS.get(name)
    if fn is None:
        raise InvalidInput(f"unknown step '{name[:64]}'")
    return fn


def _load() -> None:
    from pc_node.steps import admit, lookup, psi, verify  # noqa: F401
