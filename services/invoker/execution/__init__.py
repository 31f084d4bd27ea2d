"""Running a session's graph as plain typed Python: the execution state (results, errors,
history), the run of one node or of all that are ready, the fan-out of iterate and
collect, the node-output cache and the events a run emits. Nothing here knows gRPC."""
