"""A data-plane call to a component actor on Ray: what its caller is told when it fails."""

from __future__ import annotations

import pytest
import ray

from actors.peers import ActorPeer
from state.errors import InvalidInputError, PeerFailedError


@ray.remote
class Refusing:
    """An actor whose data-plane method refuses (a dmcs error) or breaks (any other)."""

    async def rpc(self, method: str) -> None:
        if method == "fetch_alert":
            raise InvalidInputError("this publisher has no alert archive open")
        raise KeyError(method)


async def test_a_remote_refusal_arrives_as_itself_without_the_remote_traceback(
    ray_session: None,
) -> None:
    peer = ActorPeer.of_handle("AlertPublisher", Refusing.remote())  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError) as refused:
        await peer.call("fetch_alert")
    assert type(refused.value) is InvalidInputError
    assert str(refused.value) == "this publisher has no alert archive open"
    with pytest.raises(PeerFailedError) as broke:
        await peer.call("other")
    assert str(broke.value) == "AlertPublisher.other failed: KeyError('other')"
