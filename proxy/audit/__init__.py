"""The gateway's side of the audit log: the group-committing writer and the reply hold."""
