"""The execution queue as plain typed Python: queue items in a store, claimed one at a time
by priority then id, woken by events (never polled), cancel, pause and crash recovery; and
the expansion of a batch into per-session input overrides. Sessions are referenced by id
only; nothing here knows gRPC or runs a node."""
