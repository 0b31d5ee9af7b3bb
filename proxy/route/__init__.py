"""How the relay routes one request: the pieces :mod:`proxy.relay` composes, one concept each.

``seams`` - what the relay needs from the gateway (Protocols); ``ids`` - a connection's session
and its request ids in flight; ``era`` - a 2026 client's envelope off, its result shape on;
``forward`` - one request sent to its upstream, progress routed back; ``access`` - the access
gate's decision and result screen for everything but ``tools/call``; ``methods`` - the routes of
every request but ``tools/call`` and the task methods (those stay in :mod:`proxy.relay`, with the
interceptor chain). Imports point one way: ``proxy.relay`` -> ``proxy.route``, never back.
"""
