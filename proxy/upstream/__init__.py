"""Links to upstream servers: the supervised link, response repair, the HTTP pool."""
