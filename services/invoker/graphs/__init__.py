"""Session graphs as plain typed Python: nodes of registered types with their direct
values, the edges between their fields, validation of a whole graph or of one addition,
and which nodes are ready to run. Nothing here knows gRPC or runs a node."""
