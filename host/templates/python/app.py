"""{{name}}: a Runnel plugin. ``greet`` events are answered with ``greeted``."""

from typing import Optional

import runnel
from runnel import Event, Failure, Reject, emit_json, log


class Handler(runnel.Plugin):
    def handle(self, event: Event) -> None:
        if event.name != "greet":
            return  # not ours: acknowledged without doing anything
        body = event.json()  # not JSON: rejected
        who = body.get("name") if isinstance(body, dict) else None
        if not isinstance(who, str):
            raise Reject('a greet event needs a "name"')
        log.info(f"greeting {who}")
        emit_json("greeted", {"hello": who})

    def handle_error(self, failure: Failure, event: Optional[Event]) -> None:
        if event is not None:
            log.error(f"gave up on {event.id}: {failure.message}")


WitWorld = runnel.export(Handler)
