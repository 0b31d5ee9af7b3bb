"""The lean stdio message path: framing, codec, the opening, and the fast lane beside the SDK server.

``framing`` cuts byte streams into capped lines and writes whole lines from one writer;
``codec`` decodes each line once and encodes each reply once; ``opening`` answers a stdio
client's first messages (``initialize``, ``tools/list``, ``tools/call``) before the SDK is
loaded and brings the SDK up when a message first needs it; ``front`` routes decoded
messages to the fast lane or to the SDK ``Server``; ``lane`` answers hot requests
(``tools/call``, ``tools/list``) through the relay's own routing and interceptor chain;
``upstream`` is the matching line transport to a stdio upstream. Only ``front`` imports
the SDK at module level.
"""

from proxy.wire.framing import OVERSIZED_METHOD, LineReader, LineWriter
from proxy.wire.opening import Lane

__all__ = ["OVERSIZED_METHOD", "Lane", "LineReader", "LineWriter"]
