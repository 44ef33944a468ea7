"""A Python function that does nothing: benchmark #9's per-event overhead
(fresh instance + call + drop) of a Python component."""


def handle(ctx, event):
    return []
