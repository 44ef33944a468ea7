"""{{name}}: a runnel function (created by `runnel new python {{name}}`).

It reads a JSON event such as {"name": "Dora"} and writes a greeting to the
pipeline's `results` sink. Edit `greet` (and its tests: `python3 -m unittest`)
to make it yours; `runnel up` rebuilds it when its sources change.
runnel.py is runnel's SDK, for your editor and tests: the build brings its own.
"""

import json

import runnel


def handle(ctx: runnel.Context, event: runnel.Event) -> list[runnel.Output]:
    try:
        greeting = greet(event.json())
    except ValueError as error:
        # Bad input never gets better: dead-letter it without retries.
        raise runnel.Reject(f"event {event.id}: {error}")
    runnel.log.info(greeting)
    data = json.dumps({"greeting": greeting})
    return [runnel.Output("results", data=data, key=event.subject, content_type="application/json")]


def greet(request) -> str:
    """The greeting for an event's JSON payload."""
    name = request.get("name") if isinstance(request, dict) else None
    if not isinstance(name, str):
        raise ValueError('no "name" string in the event')
    return f"Hello, {name}!"
