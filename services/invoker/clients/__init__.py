"""The invoker's clients of the other services: small domain-level APIs that keep every
wire type of those services out of the nodes and the executor."""
