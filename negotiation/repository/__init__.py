"""The versioned, signed policy repository, one concept per module::

    repository.py   PolicyRepository: load, commit, sign, recover, verify (the commit protocol)
    history.py      contracts.jsonl, pending.json and the archived policy texts on disk
    rollback.py     the signed high-water mark that refuses a rolled-back history
    files.py        durable writes (atomic replace, append, fsync) and the writer lock
"""

from negotiation.repository.repository import ActivePolicy, ChainReport, PolicyRepository

__all__ = ["ActivePolicy", "ChainReport", "PolicyRepository"]
