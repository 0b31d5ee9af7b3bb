"""The lean stdio message path: framing, codec, and the fast lane beside the SDK server.

``framing`` cuts byte streams into capped lines and writes whole lines from one writer;
``codec`` decodes each line once and encodes each reply once; ``front`` routes decoded
messages to the fast lane or to the SDK ``Server``; ``lane`` answers hot requests
(``tools/call``, ``tools/list``) through the relay's own routing and interceptor chain;
``upstream`` is the matching line transport to a stdio upstream.
"""

from proxy.wire.framing import OVERSIZED_METHOD, LineReader, LineWriter
from proxy.wire.front import Lane, serve_lines

__all__ = ["OVERSIZED_METHOD", "Lane", "LineReader", "LineWriter", "serve_lines"]
